package qemu_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// serveProcess runs `hibdisk serve --nbd --socket sock file` as its own
// process (so it can be killed) and returns once the socket is there.
func serveProcess(t *testing.T, sock, file string) *exec.Cmd {
	t.Helper()
	return startServe(t, sock, file).cmd
}

// server is a `hibdisk serve` process.
type server struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer // read it only once exited is closed
	exited chan struct{}
}

// startServe runs `hibdisk serve --nbd --socket sock args...` as its own
// process and returns once the socket is there; the test's cleanup
// kills it.
func startServe(t *testing.T, sock string, args ...string) *server {
	t.Helper()
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{exited: make(chan struct{})}
	s.cmd = exec.Command(bin, append([]string{"serve", "--nbd", "--socket", sock}, args...)...)
	s.cmd.Stderr = &s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.kill)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("hibdisk serve exited before listening: %s", s.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("hibdisk serve: socket %s never appeared", sock)
		}
	}
}

// kill ends the server with SIGKILL and waits for it; it leaves the
// socket behind, as a crash does.
func (s *server) kill() {
	s.cmd.Process.Kill()
	<-s.exited
}

// stop ends the server as Ctrl-C does (it flushes its layers) and
// returns what it printed on stderr; a failed exit fails the test.
func (s *server) stop(t *testing.T) string {
	t.Helper()
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.kill()
		t.Fatalf("hibdisk serve still running 30s after SIGINT: %s", s.stderr.String())
	}
	if !s.cmd.ProcessState.Success() {
		t.Fatalf("hibdisk serve: %v: %s", s.cmd.ProcessState, s.stderr.String())
	}
	return s.stderr.String()
}

// TestServerKilledMidRun: `hibdisk serve` is killed with SIGKILL while the
// guest writes. The guest sees I/O errors (and still reports), the layer
// passes check, and a restarted server serves everything the guest had
// flushed before the kill.
func TestServerKilledMidRun(t *testing.T) {
	guestKit(t)
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.img"), filepath.Join(dir, "job.db")
	writeRawBase(t, base, diskSize, "base", baseDataLen)
	if err := diffdisk.Create(top, diffdisk.CreateOptions{Backing: base, BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	// A short socket path: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "hibdisk-kill")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "nbd.sock")
	server := serveProcess(t, sock, top)

	const flushedLen = 1 << 20
	started := time.Now()
	m := startGuest(t, guestproto.TaskWriteUntilError, map[string]string{
		"disk": "data", "seed": "flushed", "len": "1048576",
	}, qemu.Disk{Name: "data", Socket: sock})
	ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
	defer cancel()
	if _, err := m.WaitLine(ctx, func(l string) bool { return strings.Contains(l, guestproto.Note+"flushed=1") }); err != nil {
		m.Kill()
		m.Wait(context.Background())
		t.Fatalf("guest never reported its flush: %v\nconsole:\n%s\nqemu stderr:\n%s", err, strings.Join(m.Lines(), "\n"), m.Stderr())
	}
	if err := server.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	res := waitResult(t, m, started)
	t.Logf("guest: %s more writes after the flush, then %s", res.Notes["late-writes"], res.Notes["io-error"])
	if res.Notes["io-error"] == "" {
		t.Errorf("the guest saw no I/O error")
	}

	checkLayer(t, top)
	// Restart the server and read what the guest flushed, through NBD.
	os.Remove(sock) // a killed server leaves its socket behind
	serveProcess(t, sock, top)
	out := filepath.Join(dir, "after.raw")
	uri := "nbd+unix:///?socket=" + sock
	if b, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", uri, err, b)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:flushedLen], guestproto.PatternBytes("flushed", 0, flushedLen)) {
		t.Errorf("the restarted server does not serve what the guest flushed before the kill")
	}
	// The base's data past the guest's writes is untouched.
	lateEnd := flushedLen + 16*65536
	if !bytes.Equal(got[lateEnd:baseDataLen], guestproto.PatternBytes("base", int64(lateEnd), baseDataLen-lateEnd)) {
		t.Errorf("the base's data beyond the guest's writes changed")
	}
}
