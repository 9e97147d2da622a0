package nbd

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// Tests of the client side (client*.go) against this package's server
// and the real peers.

// filledBackend is a memBackend of size bytes with data written in a
// few places.
func filledBackend(t *testing.T, size int64, seed uint64) (*memBackend, []byte) {
	t.Helper()
	m := newMemBackend(size)
	want := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, seed))
	for range 8 {
		off := r.Int64N(size - 70000)
		n := 1 + r.IntN(65536)
		p := want[off : off+int64(n)]
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		if _, err := m.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	return m, want
}

// serveAt serves exports at sock until the returned stop is called.
func serveAt(t *testing.T, sock string, exports ...Export) (stop func()) {
	t.Helper()
	s, err := NewServer(exports...)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(sock)
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(l); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s.Shutdown(ctx)
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestClientReadsAndBlockStatus(t *testing.T) {
	m, want := filledBackend(t, 4<<20, 1)
	_, sock := startServer(t, Export{Name: "d", Description: "a disk", Backend: m, ReadOnly: true})
	c, err := Dial(context.Background(), Target{Network: "unix", Address: sock, Export: "d"}, ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if x := c.Info(); x.Size != 4<<20 || x.Description != "a disk" || !x.ReadOnly() || !c.CanBlockStatus() {
		t.Fatalf("info %+v, block status %v", x, c.CanBlockStatus())
	}
	// Many readers at once, pipelined on the one connection.
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range 50 {
				off := r.Int64N(4<<20 - 1)
				n := 1 + r.Int64N(min(4<<20-off, 300000))
				got := make([]byte, n)
				if _, err := c.ReadAt(got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, want[off:off+n]) {
					t.Errorf("read %d at %d differs", n, off)
					return
				}
			}
		})
	}
	wg.Wait()
	// Block status covers the range, and zero runs read as zeros.
	for pos := int64(0); pos < 4<<20; {
		err := c.BlockStatus(pos, 4<<20-pos, func(off, n int64, state uint32) {
			if off != pos {
				t.Fatalf("run at %d, want %d", off, pos)
			}
			if state&StateZero != 0 && !bytes.Equal(want[off:off+n], make([]byte, n)) {
				t.Fatalf("run %d+%d said zero holds data", off, n)
			}
			pos += n
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.ReadAt(make([]byte, 10), 4<<20-5); err == nil {
		t.Fatal("a read past the end succeeded")
	}
	if c.Fetched.Load() == 0 {
		t.Fatal("Fetched counted nothing")
	}
}

// TestClientFetchedCountsData: Fetched counts the data bytes that came
// from the server, not the bytes asked for: a read over holes that the
// server answers with OFFSET_HOLE chunks costs no data.
func TestClientFetchedCountsData(t *testing.T) {
	m := newMemBackend(4 << 20)
	if _, err := m.WriteAt(bytes.Repeat([]byte{7}, 64<<10), 1<<20); err != nil {
		t.Fatal(err)
	}
	_, sock := startServer(t, Export{Name: "d", Backend: m, ReadOnly: true})
	c, err := Dial(context.Background(), Target{Network: "unix", Address: sock, Export: "d"}, ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, 4<<20)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if got[1<<20] != 7 || got[0] != 0 {
		t.Fatalf("read the wrong bytes")
	}
	if n := c.Fetched.Load(); n != 64<<10 {
		t.Errorf("Fetched %d after reading 4 MiB that hold 64 KiB of data, want %d", n, 64<<10)
	}
}

func TestClientUnknownExport(t *testing.T) {
	_, sock := startServer(t, Export{Name: "d", Backend: newMemBackend(1 << 20)})
	_, err := Dial(context.Background(), Target{Network: "unix", Address: sock, Export: "nope"}, ClientOptions{})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("no such export")) {
		t.Fatalf("Dial of an unknown export: %v", err)
	}
}

// TestClientReconnects: the server goes away and comes back on the same
// socket; reads wait for it and go on; a read in flight when it died is
// resent.
func TestClientReconnects(t *testing.T) {
	m, want := filledBackend(t, 1<<20, 2)
	sock := filepath.Join(t.TempDir(), "s")
	export := Export{Name: "d", Description: "same disk", Backend: m, ReadOnly: true}
	stop := serveAt(t, sock, export)
	c, err := Dial(context.Background(), Target{Network: "unix", Address: sock, Export: "d"}, ClientOptions{ReconnectDelay: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop()
	restarted := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		serveAt(t, sock, export)
		close(restarted)
	}()
	got := make([]byte, 1<<20)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatalf("read across a server restart: %v", err)
	}
	<-restarted
	if !bytes.Equal(got, want) {
		t.Fatal("data differs after the reconnect")
	}
	if n := c.Reconnects.Load(); n != 1 {
		t.Fatalf("Reconnects = %d, want 1", n)
	}
}

// TestClientGivesUp: a server that stays away fails reads with EIO after
// the reconnect delay, not before and not never.
func TestClientGivesUp(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	stop := serveAt(t, sock, Export{Name: "d", Backend: newMemBackend(1 << 20)})
	c, err := Dial(context.Background(), Target{Network: "unix", Address: sock, Export: "d"}, ClientOptions{ReconnectDelay: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop()
	start := time.Now()
	_, err = c.ReadAt(make([]byte, 4096), 0)
	if !errors.Is(err, EIO) {
		t.Fatalf("read with the server gone: %v, want EIO", err)
	}
	if waited := time.Since(start); waited < 400*time.Millisecond {
		t.Fatalf("gave up after %v, before the reconnect delay", waited)
	}
	// Without a reconnect delay a lost server fails at once.
	stop = serveAt(t, sock, Export{Name: "d", Backend: newMemBackend(1 << 20)})
	c2, err := Dial(context.Background(), Target{Network: "unix", Address: sock, Export: "d"}, ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	stop()
	if _, err := c2.ReadAt(make([]byte, 4096), 0); !errors.Is(err, EIO) {
		t.Fatalf("read with the server gone and no reconnect: %v, want EIO", err)
	}
}

// TestClientRefusesAnotherDisk: a server that comes back with another
// disk (size or description) fails every later read.
func TestClientRefusesAnotherDisk(t *testing.T) {
	for _, other := range []Export{
		{Name: "d", Description: "disk A", Backend: newMemBackend(2 << 20)},
		{Name: "d", Description: "disk B", Backend: newMemBackend(1 << 20)},
	} {
		sock := filepath.Join(t.TempDir(), "s")
		stop := serveAt(t, sock, Export{Name: "d", Description: "disk A", Backend: newMemBackend(1 << 20)})
		c, err := Dial(context.Background(), Target{Network: "unix", Address: sock, Export: "d"}, ClientOptions{ReconnectDelay: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		stop()
		serveAt(t, sock, other)
		_, err = c.ReadAt(make([]byte, 4096), 0)
		if !errors.Is(err, EIO) || !bytes.Contains([]byte(err.Error()), []byte("another disk")) {
			t.Fatalf("read after the server came back as %q: %v", other.Description, err)
		}
		c.Close()
	}
}

// TestClientReadsPeers reads exports of nbdkit and qemu-nbd.
func TestClientReadsPeers(t *testing.T) {
	testenv.RequireTools(t, "nbdkit", "nbdkit")
	testenv.RequireTools(t, "qemu-utils", "qemu-nbd", "qemu-img", "qemu-io")
	dir := t.TempDir()
	raw := filepath.Join(dir, "d.raw")
	for _, args := range [][]string{{"qemu-img", "create", "-q", "-f", "raw", raw, "8M"}, {"qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 100k", raw}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	want, _ := os.ReadFile(raw)
	for name, argv := range map[string][]string{
		"nbdkit":   {"nbdkit", "--foreground", "-r", "-U", "SOCK", "file", raw},
		"qemu-nbd": {"qemu-nbd", "-r", "-f", "raw", "-k", "SOCK", raw},
	} {
		t.Run(name, func(t *testing.T) {
			sock := filepath.Join(dir, name+".sock")
			for i := range argv {
				if argv[i] == "SOCK" {
					argv[i] = sock
				}
			}
			cmd := exec.Command(argv[0], argv[1:]...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			var c *Client
			var err error
			for try := 0; try < 500; try++ {
				if c, err = Dial(context.Background(), Target{Network: "unix", Address: sock}, ClientOptions{}); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got := make([]byte, len(want))
			if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read: %v, equal %v", err, bytes.Equal(got, want))
			}
			data := int64(0)
			for pos := int64(0); pos < int64(len(want)); {
				if err := c.BlockStatus(pos, int64(len(want))-pos, func(off, n int64, state uint32) {
					if state&StateZero == 0 {
						data += n
					}
					pos = off + n
				}); err != nil {
					t.Fatal(err)
				}
			}
			if data < 100<<10 || data > 2<<20 {
				t.Fatalf("%d bytes of data reported, want about 100 KiB", data)
			}
		})
	}
}

func TestParseURI(t *testing.T) {
	for in, want := range map[string]Target{
		"nbd://example.com/disk":                        {Network: "tcp", Address: "example.com:10809", Export: "disk"},
		"nbd://127.0.0.1:1234/":                         {Network: "tcp", Address: "127.0.0.1:1234"},
		"nbd://[::1]:1234/a%20b":                        {Network: "tcp", Address: "[::1]:1234", Export: "a b"},
		"nbds://h:1/x":                                  {Network: "tcp", Address: "h:1", Export: "x", TLS: true},
		"nbds://h:1/x?tls-certificates=/etc/pki/c":      {Network: "tcp", Address: "h:1", Export: "x", TLS: true, TLSCertificates: "/etc/pki/c"},
		"nbds+unix:///x?socket=/s&tls-certificates=c d": {Network: "unix", Address: "/s", Export: "x", TLS: true, TLSCertificates: "c d"},
		"nbd+unix:///exp?socket=/tmp/s":                 {Network: "unix", Address: "/tmp/s", Export: "exp"},
		"nbd+unix:///?socket=rel/s":                     {Network: "unix", Address: "rel/s"},
		"nbd:unix:/tmp/s:exportname=x":                  {Network: "unix", Address: "/tmp/s", Export: "x"},
		"nbd:localhost:10809":                           {Network: "tcp", Address: "localhost:10809"},
		"nbd:127.0.0.1:99:exportname=golden-img":        {Network: "tcp", Address: "127.0.0.1:99", Export: "golden-img"},
	} {
		got, err := ParseURI(in)
		if err != nil || got != want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if back, err := ParseURI(got.URI()); err != nil || back != got {
			t.Errorf("ParseURI(%q.URI() = %q) = %+v, %v", in, got.URI(), back, err)
		}
	}
	for _, bad := range []string{"nbd:///x", "nbd+unix:///x", "nbd://h/x?tls-certificates=/c", "http://h/x", "nbd:justahost", "nbd+unix://h/x?socket=/s"} {
		if _, err := ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) succeeded", bad)
		}
	}
}
