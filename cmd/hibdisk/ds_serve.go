package main

import (
	"context"
	"fmt"
	"os"

	"github.com/hibdisk/hibdisk/datastore"
	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
)

// serveDatastore answers datastore requests for the chain d served from
// file on datastore.SocketPath(file) (mode 0600), so that `hibdisk ds`
// in other processes goes through this one instead of committing to the
// served layer behind its back. hib is the chain's hibernate file when
// the server exports it (nil otherwise). A chain whose top is not a
// hibdisk layer has no datastore and gets no socket, and so does a layer
// whose socket cannot be made (a note on stderr). The returned stop
// ends the server and removes the socket; call it before closing d.
func serveDatastore(e *env, file string, d *diffdisk.Disk, hib *diffdisk.Disk) (stop func(), err error) {
	if _, ok := d.Layer(0).(*sqlitelayer.File); !ok {
		return func() {}, nil
	}
	s, err := datastore.Open(d, datastore.Options{Hibernate: hib})
	if err != nil {
		return nil, err
	}
	sock := datastore.SocketPath(file)
	nbd.RemoveStaleSocket(sock)
	l, err := nbd.ListenUnix(sock) // mode 0600; a live server's socket is refused
	if err != nil {
		// Serving goes on: another process serving the same layer (a
		// second, read-only server) answers its datastore, or the path
		// is too long for a unix socket; `hibdisk ds` then opens the
		// layer itself.
		s.Close()
		fmt.Fprintf(e.stderr, "hibdisk serve: no datastore socket for %s: %s\n", file, oneLine(err.Error()))
		return func() {}, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- datastore.Serve(ctx, l, s) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintf(e.stderr, "hibdisk serve: %s\n", oneLine(err.Error()))
		}
		os.Remove(sock)
		s.Close()
	}, nil
}
