package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// nbdsh runs a Python script in libnbd's nbdsh connected to uri and
// returns what it printed.
func nbdsh(t *testing.T, uri, script string) string {
	t.Helper()
	cmd := exec.Command("nbdsh", "-u", uri, "-c", "import errno\n"+nbdshHelpers+script)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH")) // the system python
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nbdsh: %v\n%s", err, out)
	}
	return string(out)
}

// nbdshHelpers: try(name, f) prints "name ok" or "name ERRNO-NAME".
const nbdshHelpers = `
def try_(name, f):
    try:
        f()
        print(name, "ok")
    except nbd.Error as e:
        print(name, errno.errorcode.get(e.errnum, e.errnum))

def expect(name, off, n, byte):
    try:
        ok = h.pread(n, off) == bytes([byte]) * n
        print(name, "ok" if ok else "WRONG-DATA")
    except nbd.Error as e:
        print(name, errno.errorcode.get(e.errnum, e.errnum))
`

// TestServeHostDiskFull: `hibdisk serve --nbd` of a layer on a
// filesystem that fills up, driven by libnbd. The client sees ENOSPC
// (not EIO) on the FLUSH whose commit failed and on writes until it was
// told; data flushed before reads back; the sectors of the lost writes
// read EIO, not their older content; writes work again once space is
// freed; the layer passes `hibdisk check` after the server exits.
func TestServeHostDiskFull(t *testing.T) {
	testenv.RequireTools(t, "libnbd-bin", "nbdsh")
	dir := testenv.SmallFilesystem(t, "24m")
	mustHib(t, dir, "create", "-s", "64M", "disk.db")
	sock := filepath.Join(dir, "disk.sock")
	cmd := exec.Command(hibdiskBinary(t), "serve", "--nbd", "--socket", sock, "disk.db")
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan int, 1)
	go func() { cmd.Wait(); exited <- cmd.ProcessState.ExitCode() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	})
	waitForSocket(t, sock, exited)
	uri := "nbd+unix:///?socket=" + sock

	got := nbdsh(t, uri, `
for i in range(4):
    h.pwrite(bytes([0x10 + i]) * (1 << 20), i << 20)
try_("flush", h.flush)
`)
	if got != "flush ok\n" {
		t.Fatalf("before the filesystem is full:\n%s", got)
	}
	filler := testenv.FillFilesystem(t, dir)
	// 2 MiB over the last flushed MiB and past it; 2 MiB is enough to
	// need new space at the commit.
	got = nbdsh(t, uri, `
try_("write", lambda: h.pwrite(b"\x77" * (2 << 20), 3 << 20))
expect("read-unflushed", 3 << 20, 4096, 0x77)
try_("flush", h.flush)
expect("read-flushed", 0, 1 << 20, 0x10)
expect("read-flushed-2", 2 << 20, 1 << 20, 0x12)
expect("read-lost", 3 << 20, 4096, 0x13)
expect("read-lost-2", 4 << 20, 4096, 0)
expect("read-never-written", 8 << 20, 4096, 0)
try_("write-again", lambda: h.pwrite(b"\x88" * 4096, 16 << 20))
try_("flush-again", h.flush)
expect("read-lost-3", 16 << 20, 4096, 0x88)
`)
	want := `write ok
read-unflushed ok
flush ENOSPC
read-flushed ok
read-flushed-2 ok
read-lost EIO
read-lost-2 EIO
read-never-written ok
write-again ok
flush-again ENOSPC
read-lost-3 EIO
`
	if got != want {
		t.Errorf("on a full filesystem the client saw:\n%s\nwant:\n%s", got, want)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	got = nbdsh(t, uri, `
try_("write", lambda: h.pwrite(b"\x99" * (1 << 20), 3 << 20))
try_("flush", h.flush)
expect("read", 3 << 20, 1 << 20, 0x99)
expect("read-flushed", 0, 1 << 20, 0x10)
`)
	if want := "write ok\nflush ok\nread ok\nread-flushed ok\n"; got != want {
		t.Errorf("after space was freed the client saw:\n%s\nwant:\n%s", got, want)
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := <-exited; code != 0 {
		t.Errorf("serve exited with %d after the filesystem had space again:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "errno=28") {
		t.Errorf("the server did not log the ENOSPC replies:\n%s", stderr.String())
	}
	if out := mustHib(t, dir, "check", "disk.db"); !strings.Contains(out, "No errors") {
		t.Errorf("check after serving: %s", out)
	}
	// The flushed data and the rewrite are in the layer; the lost writes
	// are not (their sectors read what was flushed before: zeros).
	d, err := diffdisk.Open(filepath.Join(dir, "disk.db"), diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, c := range []struct {
		off  int64
		want byte
	}{{0, 0x10}, {1 << 20, 0x11}, {2 << 20, 0x12}, {3 << 20, 0x99}, {4 << 20, 0}, {16 << 20, 0}} {
		p := make([]byte, 1<<20)
		if _, err := d.ReadAt(p, c.off); err != nil || !bytes.Equal(p, bytes.Repeat([]byte{c.want}, len(p))) {
			t.Errorf("after serving, the MiB at %d is not %#x (err %v)", c.off, c.want, err)
		}
	}
}
