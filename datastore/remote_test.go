package datastore_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/datastore"
	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
)

// serve serves the datastore of the layer at path until the test ends
// and returns a client.
func serve(t *testing.T, path string) (*datastore.Store, *datastore.Client) {
	t.Helper()
	s := mustOpen(t, path)
	l, err := net.Listen("unix", datastore.SocketPath(path))
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- datastore.Serve(ctx, l, s) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c, err := datastore.Dial(path)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return s, c
}

func TestRemote(t *testing.T) {
	path := newBase(t)
	_, err := datastore.Dial(path)
	if err == nil {
		t.Fatal("Dial without a server succeeded")
	}
	local, c := serve(t, path)

	must(t, c.Subscribe("w", ".*", nil, datastore.Initial))
	wantErr(t, "remote subscribe twice", c.Subscribe("w", ".*", nil, 0), datastore.ErrExists)
	must(t, c.Publish(datastore.Entry{Key: "k", Type: datastore.U32, U32: 7, Owner: "p"}, 0))
	wantErr(t, "remote publish existing", c.Publish(datastore.Entry{Key: "k", Type: datastore.U32, U32: 8, Owner: "p"}, 0), datastore.ErrExists)
	must(t, c.Publish(datastore.Entry{Key: "m", Type: datastore.Mem, Mem: []byte{0, 1, 2}, Owner: "p"}, datastore.Private))
	must(t, c.Publish(datastore.Entry{Key: "l", Type: datastore.Label, Label: 3, Owner: "p"}, 0))
	must(t, c.Publish(datastore.Entry{Key: "map", Type: datastore.Map, Map: &datastore.MapRange{Source: datastore.SourceDisk, Length: 4}, Owner: "p"}, 0))
	wantErr(t, "remote bad map", c.Publish(datastore.Entry{Key: "bad", Type: datastore.Map, Map: &datastore.MapRange{Source: "x", Length: 4}}, 0), disklayer.ErrInvalid)

	if e, err := c.Retrieve("m", datastore.Mem, "p"); err != nil || !cmp.Equal(e.Mem, []byte{0, 1, 2}) {
		t.Errorf("remote retrieve mem = %+v, %v", e, err)
	}
	_, err = c.Retrieve("m", datastore.Mem, "q")
	wantErr(t, "remote retrieve private", err, datastore.ErrPermission)
	if name, err := c.RetrieveLabelName(3, ""); err != nil || name != "l" {
		t.Errorf("remote label name = %q, %v", name, err)
	}
	n, err := c.SnapshotMap("map", "")
	if err != nil || n != 1 {
		t.Errorf("remote snapshot = %d, %v", n, err)
	}
	buf := make([]byte, 2)
	if n, length, err := c.RetrieveMap("map", "", buf, 1); err != nil || n != 2 || length != 4 {
		t.Errorf("remote retrieve map = %d, %d, %v", n, length, err)
	}
	wantErr(t, "remote delete missing", c.Delete("nope", datastore.U32, "p"), datastore.ErrNotFound)
	must(t, c.Delete("k", datastore.U32, "p"))
	list, err := c.List("p")
	must(t, err)
	if len(list) != 3 {
		t.Errorf("remote list = %+v", list)
	}
	if sub, err := c.Subscription("w"); err != nil || sub.Pattern != ".*" {
		t.Errorf("remote subscription = %+v, %v", sub, err)
	}
	// The server's own Store sees the same entries.
	if _, err := local.RetrieveLabel("l", ""); err != nil {
		t.Errorf("local retrieve: %v", err)
	}

	// A change made in the server's process wakes a remote Wait.
	v, err := c.Version()
	must(t, err)
	go func() {
		time.Sleep(20 * time.Millisecond)
		local.PublishU32("late", 1, "p", 0)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must(t, c.Wait(ctx, v))
	var got []string
	for {
		ch, ok, err := c.Check("w")
		must(t, err)
		if !ok {
			break
		}
		got = append(got, ch.Key)
	}
	// Initial found nothing; then k (deleted), m (private to p, so not
	// for w), l, map, late; k was published and deleted: one report.
	if want := []string{"l", "map", "k", "late"}; !cmp.Equal(got, want) {
		t.Errorf("remote checks = %v, want %v", got, want)
	}
	must(t, c.Unsubscribe("w"))
}

func TestRemoteClosedServer(t *testing.T) {
	path := newBase(t)
	s, _, _ := open(t, path, diffdisk.Options{})
	l, err := net.Listen("unix", datastore.SocketPath(path))
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- datastore.Serve(ctx, l, s) }()
	c, err := datastore.Dial(path)
	must(t, err)
	defer c.Close()
	must(t, c.Publish(datastore.Entry{Key: "k", Type: datastore.U32}, 0))
	cancel()
	must(t, <-done)
	if _, err := c.List(""); err == nil {
		t.Error("request after the server stopped succeeded")
	}
}

// TestRemoteKeepsServedLayerWritable: a served chain holding an open read
// transaction (as it does between guest requests) keeps taking writes
// when another process publishes through the server, whose Store shares
// the chain. (A
// publish committed directly by another connection makes that write fail
// with "database is locked": the read snapshot is stale.)
func TestRemoteKeepsServedLayerWritable(t *testing.T) {
	path := newBase(t)
	s, served, _ := open(t, path, diffdisk.Options{})
	l, err := net.Listen("unix", datastore.SocketPath(path))
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go datastore.Serve(ctx, l, s)
	c, err := datastore.Dial(path)
	must(t, err)
	defer c.Close()
	sector := make([]byte, 4096)
	sector[0] = 1
	for i := range 3 {
		_, err := served.WriteAt(sector, int64(i)*4096)
		must(t, err)
		must(t, served.Flush())
		_, err = served.ReadAt(sector, int64(i)*4096) // leaves the read transaction open
		must(t, err)
		must(t, c.Publish(datastore.Entry{Key: "k", Type: datastore.U32, U32: uint32(i)}, datastore.Overwrite))
		if _, err := served.WriteAt(sector, int64(i+1)*4096); err != nil {
			t.Fatalf("write after a publish through the server: %v", err)
		}
		must(t, served.Flush())
	}
}
