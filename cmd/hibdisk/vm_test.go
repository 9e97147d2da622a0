package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/test/qemu/testguest"
	"github.com/hibdisk/hibdisk/vmm/qemu/guestkit"
)

// repoRoot is the module root (tests of this package start in cmd/hibdisk).
var repoRoot = filepath.Dir(filepath.Dir(filepath.Dir(testdata)))

// guestKit builds (or finds cached under build/guest) the test guest of
// test/qemu, shared with that package's tests through the kit cache.
var guestKitOnce = sync.OnceValues(func() (*guestkit.Kit, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	return testguest.Build(ctx, repoRoot, nil)
})

func guestKit(t *testing.T) *guestkit.Kit {
	t.Helper()
	testenv.RequireTools(t, "qemu-system-x86", "qemu-system-x86_64")
	testenv.RequireTools(t, "apt", "apt-get", "apt-cache")
	testenv.RequireTools(t, "dpkg", "dpkg-deb")
	k, err := guestKitOnce()
	if err != nil {
		t.Fatalf("guest kit: %v", err)
	}
	return k
}

// TestVMRunKernel: `hibdisk vm run --kernel --initrd --append DISK` boots
// the test guest from a layer; the console is on stdout, the QMP socket
// on stderr, and the guest's fsynced writes are in the layer afterwards.
func TestVMRunKernel(t *testing.T) {
	k := guestKit(t)
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "16M", "base.db")
	mustHib(t, dir, "create", "-b", "base.db", "job.db")
	appendArgs := "quiet " + guestproto.Cmdline(guestproto.TaskPatterns, map[string]string{"disk": "job", "seed": "vm-run", "len": "65536"})
	r := hib(t, dir, "vm", "run", "--kernel", k.Kernel, "--initrd", k.Initrd, "--append", appendArgs, "--mem", "256M", "job.db")
	if r.code != 0 {
		t.Fatalf("vm run: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	var res guestproto.Result
	for _, line := range strings.Split(r.stdout, "\n") {
		res.ParseLine(line)
	}
	if !res.Passed {
		t.Fatalf("guest did not pass; console:\n%s", r.stdout)
	}
	if !strings.HasPrefix(r.stderr, "hibdisk vm: QMP socket /") {
		t.Errorf("stderr does not name the QMP socket: %q", r.stderr)
	}
	d, err := diffdisk.OpenImage(filepath.Join(dir, "job.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, off := range []int64{0, 16<<20 - 65536} {
		got := make([]byte, 65536)
		if _, err := d.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, guestproto.PatternBytes("vm-run", off, 65536)) {
			t.Errorf("job.db at %d does not hold the guest's pattern", off)
		}
	}
}

// bootSector is a BIOS boot sector that writes bootMessage to COM1 and
// halts: mov dx,0x3f8; mov si,msg; next: lodsb; test al,al; jz done;
// out dx,al; jmp next; done: cli; hlt.
func bootSector() []byte {
	code := []byte{
		0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0xbe, 0x10, 0x7c, // mov si, 0x7c10 (msg)
		0xac,       // next: lodsb
		0x84, 0xc0, // test al, al
		0x74, 0x03, // jz done
		0xee,       // out dx, al
		0xeb, 0xf8, // jmp next
		0xfa, 0xf4, // done: cli; hlt
	}
	s := make([]byte, 512)
	copy(s, code)
	copy(s[0x10:], bootMessage+"\r\n\x00")
	s[510], s[511] = 0x55, 0xaa
	return s
}

const bootMessage = "hibdisk boot sector says hello"

// syncBuffer is a bytes.Buffer safe for a writer and a poller.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestVMRunBootDiskInterrupted: `vm run --boot DISK` boots a BIOS boot
// sector from a hibdisk layer (its message reaches stdout), and
// interrupting the command (Ctrl-C) quits QEMU through QMP and exits 0
// with the layer intact.
func TestVMRunBootDiskInterrupted(t *testing.T) {
	guestKit(t)
	dir := testDir(t)
	bootLayer(t, dir)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"vm", "run", "--boot", "boot.db", "--mem", "32M"}, &env{stdout: &stdout, stderr: &stderr})
	}()
	deadline := time.After(time.Minute)
	for !strings.Contains(stdout.String(), bootMessage) {
		select {
		case code := <-done:
			t.Fatalf("vm run exited %d before the boot message\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
		case <-deadline:
			cancel()
			<-done
			t.Fatalf("no boot message within a minute\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel() // as SIGINT does
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("vm run after interrupt: exit %d, stderr:\n%s", code, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("vm run did not end within a minute of the interrupt")
	}
	mustHib(t, dir, "compare", "boot.db", "boot.img")
}

// TestVMRunUsage: bad invocations end with one line on stderr, exit 2
// for bad usage and 1 for disks QEMU could not be given, before QEMU or
// the NBD server starts.
func TestVMRunUsage(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "a.db")
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"vm"}, 2},
		{[]string{"vm", "start"}, 2},
		{[]string{"vm", "run", "a.db"}, 2},                            // nothing to boot
		{[]string{"vm", "run", "--initrd", "x", "--boot", "a.db"}, 2}, // initrd without kernel
		{[]string{"vm", "run", "--boot", "a.db", "--mem", "lots"}, 2},
		{[]string{"vm", "run", "--boot", "a.db", "--mem", "1M"}, 2},
		{[]string{"vm", "run", "--boot", "bad name=a.db"}, 1}, // not a usable serial
		{[]string{"vm", "run", "--boot", "=a.db"}, 1},         // empty serial
		{[]string{"vm", "run", "--boot", "missing.db"}, 1},
		{[]string{"vm", "run", "--kernel", "/nonexistent/vmlinuz"}, 2}, // no disk: refused before QEMU starts
	} {
		r := hib(t, dir, c.args...)
		if r.code != c.code || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want exit %d and one line", strings.Join(c.args, " "), r.code, r.stderr, c.code)
		}
	}
}

// TestVMRunJSON: vm run --json prints one JSON line on stdout once the
// machine is up, and the guest's console goes to stderr; the QMP socket
// it names exists, the QEMU pid is a live process, and a client reads
// the disk at its URI while the machine runs. The shape is golden.
func TestVMRunJSON(t *testing.T) {
	testenv.RequireTools(t, "qemu-system-x86", "qemu-system-x86_64")
	dir := testDir(t)
	bootLayer(t, dir)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"vm", "run", "--json", "--boot", "boot.db", "--mem", "32M"}, &env{stdout: &stdout, stderr: &stderr})
	}()
	deadline := time.After(time.Minute)
	for !strings.Contains(stderr.String(), bootMessage) || !strings.Contains(stdout.String(), "\n") {
		select {
		case code := <-done:
			t.Fatalf("vm run exited %d early\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
		case <-deadline:
			cancel()
			<-done
			t.Fatalf("no JSON line and boot message on stderr within a minute\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	var up vmJSON
	if err := json.Unmarshal([]byte(stdout.String()), &up); err != nil {
		t.Fatalf("%v: %q", err, stdout.String())
	}
	if fi, err := os.Stat(up.QMP); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("qmp %q is not a socket (%v)", up.QMP, err)
	}
	if err := syscall.Kill(up.QEMUPID, 0); err != nil || up.PID != os.Getpid() {
		t.Errorf("qemu_pid %d (kill 0: %v), pid %d (want %d)", up.QEMUPID, err, up.PID, os.Getpid())
	}
	if len(up.Disks) != 1 {
		t.Fatalf("disks: %+v", up.Disks)
	}
	if size, err := nbdinfo(t, "--size", up.Disks[0].URI); err != nil || strings.TrimSpace(size) != "1048576" {
		t.Errorf("nbdinfo %s: %v %s", up.Disks[0].URI, err, size)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("vm run after interrupt: exit %d, stderr:\n%s", code, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("vm run did not end within a minute of the interrupt")
	}
	if strings.Count(stdout.String(), "\n") != 1 {
		t.Errorf("stdout holds more than the JSON line:\n%s", stdout.String())
	}
	golden(t, "vm-run-json.golden", normalizeRun(stdout.String(), dir))
}

// startVMJSON runs `hibdisk vm ARGS...` (run or resume with --json)
// in-process and returns what its JSON line says once the machine is
// up, and a function that interrupts it (as Ctrl-C) and returns its exit
// status and stdout.
func startVMJSON(t *testing.T, args ...string) (vmJSON, func() (int, string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"vm"}, args...), &env{stdout: &stdout, stderr: &stderr}) }()
	stop := func() (int, string) {
		cancel()
		select {
		case code := <-done:
			done <- code
			return code, stdout.String()
		case <-time.After(time.Minute):
			t.Fatalf("vm %s did not end within a minute of the interrupt", strings.Join(args, " "))
			return -1, ""
		}
	}
	t.Cleanup(func() { stop() })
	deadline := time.After(time.Minute)
	for !strings.Contains(stdout.String(), "\n") {
		select {
		case code := <-done:
			done <- code
			t.Fatalf("vm %s exited %d early\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
		case <-deadline:
			t.Fatalf("vm %s: no JSON line within a minute\nstderr:\n%s", strings.Join(args, " "), stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	var up vmJSON
	if err := json.Unmarshal([]byte(stdout.String()), &up); err != nil {
		t.Fatalf("%v: %q", err, stdout.String())
	}
	return up, stop
}

// TestVMResumeJSON: vm resume --json prints one JSON line naming the
// snapshot, the new top layer, the QMP socket and the disk's URI, which
// a client reads while the resumed machine runs. Golden.
func TestVMResumeJSON(t *testing.T) {
	testenv.RequireTools(t, "qemu-system-x86", "qemu-system-x86_64")
	dir := testDir(t)
	bootLayer(t, dir)
	_, stop := startVMJSON(t, "run", "--json", "--boot", "boot.db", "--mem", "32M")
	mustHib(t, dir, "vm", "hibernate", "boot.db")
	if code, _ := stop(); code != 0 {
		t.Fatalf("vm run: exit %d after hibernate", code)
	}

	up, stop := startVMJSON(t, "resume", "--json", "--top", "next.db", "boot.db")
	if !strings.HasSuffix(up.Layer, "/next.db") || !strings.HasSuffix(up.Snapshot, "/boot.db") || !up.Hibernatable || len(up.Disks) != 1 {
		t.Errorf("resume --json: %+v", up)
	}
	if size, err := nbdinfo(t, "--size", up.Disks[0].URI); err != nil || strings.TrimSpace(size) != "1048576" {
		t.Errorf("nbdinfo %s: %v %s", up.Disks[0].URI, err, size)
	}
	code, out := stop()
	if code != 0 || strings.Count(out, "\n") != 1 {
		t.Errorf("vm resume: exit %d, stdout %q", code, out)
	}
	golden(t, "vm-resume-json.golden", normalizeRun(out, dir))
}

// bootLayer makes boot.db in dir: a 1 MiB disk whose first sector is
// bootSector, converted from a raw image.
func bootLayer(t *testing.T, dir string) {
	t.Helper()
	img := filepath.Join(dir, "boot.img")
	if err := os.WriteFile(img, append(bootSector(), make([]byte, 1<<20-512)...), 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "convert", "boot.img", "boot.db")
}
