package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// builtBinary is hibdisk built once for tests that need a real process
// (kill -9, socket activation).
var builtBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "hibdisk-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "hibdisk")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Dir(testdata) // the package; tests chdir elsewhere
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return bin, nil
})

func hibdiskBinary(t *testing.T) string {
	t.Helper()
	bin, err := builtBinary()
	if err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

// startServer runs `hibdisk serve` in-process until the test ends; it
// returns once the socket accepts connections.
func startServer(t *testing.T, dir string, args ...string) (stop func() result) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	sock := ""
	for i, a := range args {
		if a == "--socket" {
			sock = args[i+1]
		}
	}
	t.Chdir(dir)
	go func() {
		done <- run(ctx, append([]string{"serve", "--nbd"}, args...), &env{stdout: &out, stderr: &errOut})
	}()
	waitForSocket(t, sock, done)
	var once sync.Once
	var res result
	stop = func() result {
		once.Do(func() {
			cancel()
			code := <-done
			res = result{out.String(), errOut.String(), code}
		})
		return res
	}
	t.Cleanup(func() { stop() })
	return stop
}

func waitForSocket(t *testing.T, sock string, done chan int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited with %d before listening", code)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatalf("socket %s never appeared", sock)
}

func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") || strings.Contains(string(out), "error") {
		t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
	}
	return string(out)
}

// TestServeDiffOverRawBase: a diff layer over a raw base, served and
// written by qemu-io, keeps every write in the top layer; the base file's
// bytes never change; the data is there after shutdown; the socket is
// removed.
func TestServeDiffOverRawBase(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io", "qemu-img")
	dir := testDir(t)
	base := filepath.Join(dir, "base.img")
	content := bytes.Repeat([]byte("golden base "), (8<<20)/12+1)[:8<<20]
	if err := os.WriteFile(base, content, 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "create", "-b", "base.img", "-F", "raw", "job.db")
	sock := filepath.Join(dir, "job.sock")
	stop := startServer(t, dir, "--socket", sock, "job.db")
	uri := "nbd+unix:///?socket=" + sock
	qemuIO(t, uri,
		"write -P 0x5a 0 64k", "read -P 0x5a 0 64k",
		"write -P 0x33 1000 3000", "read -P 0x33 1000 3000",
		"write -z 1M 64k", "read -P 0 1M 64k",
		"discard 2M 64k", "read -P 0 2M 64k",
		"write -P 0x77 8384512 4096", "read -P 0x77 8384512 4096", // the last sector
		"aio_write -P 0x11 3M 64k", "aio_flush", "read -P 0x11 3M 64k", "flush")
	// Unwritten parts still read the base through the export.
	qemuIO(t, uri, "read -v 4M 12") // prints, no pattern
	if r := stop(); r.code != 0 {
		t.Fatalf("serve exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after shutdown (stat: %v)", err)
	}
	got, err := os.ReadFile(base)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("the raw base changed (err %v)", err)
	}
	d, err := diffdisk.Open(filepath.Join(dir, "job.db"), diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := append([]byte(nil), content...)
	copy(want[0:], bytes.Repeat([]byte{0x5a}, 64<<10))
	copy(want[1000:], bytes.Repeat([]byte{0x33}, 3000))
	copy(want[1<<20:], make([]byte, 64<<10))
	copy(want[2<<20:], make([]byte, 64<<10))
	copy(want[3<<20:], bytes.Repeat([]byte{0x11}, 64<<10))
	copy(want[8384512:], bytes.Repeat([]byte{0x77}, 4096))
	view := make([]byte, len(want))
	if _, err := d.ReadAt(view, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(view, want); i >= 0 {
		t.Fatalf("after serving, the chain differs from the expected view at offset %d", i)
	}
	out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", base, base).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare: %v %s", err, out)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestServeFlushSurvivesKill: writes acknowledged by a FLUSH survive
// SIGKILL of the server process.
func TestServeFlushSurvivesKill(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "16M", "disk.db")
	sock := filepath.Join(dir, "disk.sock")
	cmd := exec.Command(hibdiskBinary(t), "serve", "--nbd", "--socket", sock, "disk.db")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan int, 1)
	go func() { cmd.Wait(); exited <- cmd.ProcessState.ExitCode() }()
	waitForSocket(t, sock, exited)
	// qemu-io writes with FUA by default; the explicit flush is the
	// guest's fsync.
	qemuIO(t, "nbd+unix:///?socket="+sock, "write -P 0xc3 0 1M", "write -P 0x3c 5M 12k", "flush")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	os.Remove(sock)
	d, err := diffdisk.Open(filepath.Join(dir, "disk.db"), diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := make([]byte, 1<<20)
	if _, err := d.ReadAt(p, 0); err != nil || !bytes.Equal(p, bytes.Repeat([]byte{0xc3}, 1<<20)) {
		t.Fatalf("flushed data at 0 lost after kill -9 (err %v)", err)
	}
	p = p[:12<<10]
	if _, err := d.ReadAt(p, 5<<20); err != nil || !bytes.Equal(p, bytes.Repeat([]byte{0x3c}, 12<<10)) {
		t.Fatalf("flushed data at 5M lost after kill -9 (err %v)", err)
	}
}

// TestServeSocketActivation: `nbdinfo -- [ hibdisk serve --nbd FILE ]`
// hands hibdisk a listening socket (LISTEN_FDS) and talks to it.
func TestServeSocketActivation(t *testing.T) {
	testenv.RequireTools(t, "libnbd-bin", "nbdinfo")
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "3M", "disk.db")
	cmd := exec.Command("nbdinfo", "--size", "--", "[", hibdiskBinary(t), "serve", "--nbd", "disk.db", "]")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(lastLine(string(out))) != "3145728" {
		t.Fatalf("nbdinfo with socket activation: %v\n%s", err, out)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestServeExports: several exports with descriptions, read-only mode,
// and the hibernate file as its own export.
func TestServeExports(t *testing.T) {
	testenv.RequireTools(t, "libnbd-bin", "nbdinfo")
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "4M", "a.db")
	mustHib(t, dir, "create", "-s", "8M", "b.db")
	sock := filepath.Join(dir, "s.sock")
	startServer(t, dir, "--socket", sock, "--export", "first", "--export", "second=b.db", "--hibernate-export", "hib", "a.db")
	out, err := exec.Command("nbdinfo", "--list", "nbd+unix:///?socket="+sock).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	for _, want := range []string{`export="first"`, `export="second"`, `export="hib"`, "hibdisk b.db", "export-size: 8388608"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("nbdinfo --list lacks %q:\n%s", want, out)
		}
	}
	// The hibernate export is a disk of its own: a write there lands in
	// hibernate_blocks, not in the disk.
	qemuIO(t, "nbd+unix:///hib?socket="+sock, "write -P 0x42 1M 4k", "read -P 0x42 1M 4k", "flush")
	qemuIO(t, "nbd+unix:///first?socket="+sock, "read -P 0 1M 4k")

	// b.db is served writable above, so a read-only export of it is
	// refused (layer locks); export another layer.
	mustHib(t, dir, "create", "-s", "8M", "c.db")
	sockRO := filepath.Join(dir, "ro.sock")
	startServer(t, dir, "--socket", sockRO, "--read-only", "c.db")
	out, _ = exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", "nbd+unix:///?socket="+sockRO).CombinedOutput()
	// qemu-io opens read-write and QEMU's client refuses that on an
	// export flagged read-only; either way nothing is written.
	if !strings.Contains(string(out), "Operation not permitted") && !strings.Contains(string(out), "Permission denied") {
		t.Errorf("write on a read-only export: %s", out)
	}
}

// TestServeParallelConnections: four clients write disjoint ranges at
// once, each flushes, and a fifth connection reads every write back —
// what CAN_MULTI_CONN promises.
func TestServeParallelConnections(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "64M", "disk.db")
	sock := filepath.Join(dir, "disk.sock")
	startServer(t, dir, "--socket", sock, "disk.db")
	uri := "nbd+unix:///?socket=" + sock
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := i * (16 << 20)
			var cmds []string
			for j := 0; j < 16; j++ {
				cmds = append(cmds, "-c", fmt.Sprintf("aio_write -P 0x%x %d 256k", 0x10+i, base+j*(1<<20)))
			}
			cmds = append(cmds, "-c", "aio_flush", "-c", "flush")
			out, err := exec.Command("qemu-io", append(append([]string{"-f", "raw", "-t", "none"}, cmds...), uri)...).CombinedOutput()
			if err != nil || strings.Contains(string(out), "error") {
				errs <- fmt.Errorf("writer %d: %v\n%s", i, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var reads []string
	for i := range 4 {
		for j := 0; j < 16; j++ {
			off := i*(16<<20) + j*(1<<20)
			reads = append(reads, fmt.Sprintf("read -P 0x%x %d 256k", 0x10+i, off), fmt.Sprintf("read -P 0 %d 768k", off+256<<10))
		}
	}
	qemuIO(t, uri, reads...)
}

// TestServeTCP: --listen serves over TCP, and an empty host means
// loopback.
func TestServeTCP(t *testing.T) {
	testenv.RequireTools(t, "libnbd-bin", "nbdinfo")
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "2M", "disk.db")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	t.Chdir(dir)
	go func() {
		done <- run(ctx, []string{"serve", "--nbd", "--listen", fmt.Sprintf(":%d", port), "disk.db"}, &env{stdout: &out, stderr: &errOut})
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exit %d: %s", code, errOut.String())
		}
		if !strings.Contains(out.String(), fmt.Sprintf("nbd://127.0.0.1:%d/", port)) {
			t.Errorf("banner lacks the TCP URI:\n%s", out.String())
		}
	}()
	uri := fmt.Sprintf("nbd://127.0.0.1:%d/", port)
	var lastErr error
	for i := 0; i < 100; i++ {
		var o []byte
		if o, lastErr = exec.Command("nbdinfo", "--size", uri).CombinedOutput(); lastErr == nil {
			if got := strings.TrimSpace(string(o)); got != "2097152" {
				t.Fatalf("nbdinfo --size over TCP: %q", got)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("nbdinfo over TCP never connected: %v", lastErr)
}

// TestServeSIGTERM: the real process, stopped with SIGTERM after a client
// wrote, exits 0, closes the layer cleanly (no WAL left: SQLite
// checkpointed and removed it) and removes its socket; the data is there.
// (In-flight requests at shutdown are covered by vmm/nbd's Shutdown tests.)
func TestServeSIGTERM(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "16M", "disk.db")
	sock := filepath.Join(dir, "disk.sock")
	cmd := exec.Command(hibdiskBinary(t), "serve", "--nbd", "--socket", sock, "disk.db")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan int, 1)
	go func() { cmd.Wait(); exited <- cmd.ProcessState.ExitCode() }()
	waitForSocket(t, sock, exited)
	// -t writeback: no FUA on the writes.
	out, err := exec.Command("qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 0x6b 0 2M", "nbd+unix:///?socket="+sock).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("serve exited %d after SIGTERM: %s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit after SIGTERM")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind (stat: %v)", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "disk.db-wal")); err == nil && fi.Size() > 0 {
		t.Errorf("WAL of %d bytes left: the layer was not closed cleanly", fi.Size())
	}
	d, err := diffdisk.Open(filepath.Join(dir, "disk.db"), diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := make([]byte, 2<<20)
	if _, err := d.ReadAt(p, 0); err != nil || !bytes.Equal(p, bytes.Repeat([]byte{0x6b}, 2<<20)) {
		t.Fatalf("unflushed writes were not flushed at shutdown (err %v)", err)
	}
}

// TestServeTCPAllAddresses: with --listen 0.0.0.0:PORT the banner's URI
// is one a client can connect to (this machine's name, or loopback when
// the name does not resolve), not the listening address nbd://[::]:PORT.
func TestServeTCPAllAddresses(t *testing.T) {
	testenv.RequireTools(t, "libnbd-bin", "nbdinfo")
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "2M", "disk.db")
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	host := "127.0.0.1"
	if name, err := os.Hostname(); err == nil {
		if _, err := net.LookupHost(name); err == nil {
			host = name
		}
	}
	want := fmt.Sprintf("  NBD URI: nbd://%s/\n", net.JoinHostPort(host, strconv.Itoa(port)))
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	var errOut bytes.Buffer
	done := make(chan int, 1)
	t.Chdir(dir)
	go func() {
		done <- run(ctx, []string{"serve", "--nbd", "--insecure", "--listen", fmt.Sprintf("0.0.0.0:%d", port), "disk.db"}, &env{stdout: out, stderr: &errOut})
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exit %d: %s", code, errOut.String())
		}
	}()
	for i := 0; !strings.Contains(out.String(), "Serving;"); i++ {
		if i == 200 {
			t.Fatalf("no banner: %q", out.String())
		}
		time.Sleep(25 * time.Millisecond)
	}
	banner := out.String()
	if !strings.Contains(banner, want) || strings.Contains(banner, "[::]") || strings.Contains(banner, "0.0.0.0") {
		t.Fatalf("banner for --listen 0.0.0.0:%d, want the line %q:\n%s", port, want, banner)
	}
	uri := strings.TrimSpace(strings.TrimPrefix(want, "  NBD URI:"))
	if o, err := exec.Command("nbdinfo", "--size", uri).CombinedOutput(); err != nil || strings.TrimSpace(string(o)) != "2097152" {
		t.Fatalf("nbdinfo --size %s: %v: %s", uri, err, o)
	}
}
