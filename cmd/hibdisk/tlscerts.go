package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hibdisk/hibdisk/vmm/nbd"
)

func init() {
	register(command{name: "tls-certs", summary: "make a CA, a server and client certificates for NBD over TLS (QEMU's tls-creds-x509 layout)", run: runTLSCerts})
}

// runTLSCerts makes the credentials of a first TLS setup (nbd.MakeCerts),
// so that serving across machines needs no certtool.
func runTLSCerts(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "tls-certs", "[--server-name NAME]... [--clients N] DIR")
	var names multiFlag
	fs.Var(&names, "server-name", "a host `name` or address clients reach the server by; repeatable (default: localhost and 127.0.0.1)")
	clients := fs.Int("clients", 1, "how many client certificates to make (client-1, client-2, ...)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *clients < 0 {
		return usagef("--clients %d: want 0 or more", *clients)
	}
	dir := pos[0]
	if err := nbd.MakeCerts(dir, nbd.CertOptions{ServerNames: names, Clients: *clients}); err != nil {
		return err
	}
	w := e.stdout
	fmt.Fprintf(w, "CA:      %s (keep %s private: it signs new certificates)\n", filepath.Join(dir, nbd.CACertFile), filepath.Join(dir, "ca-key.pem"))
	fmt.Fprintf(w, "server:  %s  (hibdisk serve --tls-creds, qemu-nbd --tls-creds, nbdkit --tls-certificates)\n", filepath.Join(dir, "server"))
	for i := 1; i <= *clients; i++ {
		fmt.Fprintf(w, "client:  %s  (QEMU tls-creds-x509,endpoint=client,dir=...; libnbd nbds://HOST/?tls-certificates=...)\n", filepath.Join(dir, fmt.Sprintf("client-%d", i)))
	}
	return nil
}
