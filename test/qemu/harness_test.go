// Package qemu_test is hibdisk's end-to-end suite: QEMU (TCG) boots Debian's
// cloud kernel with a Go guest as /init (vmm/qemu/guestkit,
// test/qemu/guest) from disks that hibdisk serves over NBD, and the host
// checks afterwards, through hibdisk, what the guest did to the layers.
//
// Success is decided by the guest's console protocol (guestproto) and by
// host-side checks, never by QEMU's exit status.
package qemu_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	_ "github.com/hibdisk/hibdisk/internal/checkers" // checkLayer's diffdisk.Check is the whole check
	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/test/qemu/testguest"
	"github.com/hibdisk/hibdisk/vmm/qemu"
	"github.com/hibdisk/hibdisk/vmm/qemu/guestkit"
)

// repoRoot is the module root: tests run in test/qemu.
var repoRoot = func() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}()

// binDir holds the hibdisk binary built for tests that need a process.
var binDir string

func TestMain(m *testing.M) {
	var err error
	if binDir, err = os.MkdirTemp("", "hibdisk-e2e-bin"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(binDir)
	os.Exit(code)
}

// requireQEMU checks for QEMU and what building the guest kit needs.
func requireQEMU(t *testing.T) {
	t.Helper()
	testenv.RequireTools(t, "qemu-system-x86", "qemu-system-x86_64")
	testenv.RequireTools(t, "apt", "apt-get", "apt-cache")
	testenv.RequireTools(t, "dpkg", "dpkg-deb")
}

var kit = sync.OnceValues(func() (*guestkit.Kit, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	return testguest.Build(ctx, repoRoot, nil)
})

// guestKit is the kernel and initramfs, built once per test binary (and
// cached across runs under build/guest).
func guestKit(t *testing.T) *guestkit.Kit {
	t.Helper()
	requireQEMU(t)
	k, err := kit()
	if err != nil {
		t.Fatalf("guest kit: %v", err)
	}
	return k
}

var hibdiskBuild = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "hibdisk")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/hibdisk")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/hibdisk: %v: %s", err, out)
	}
	return bin, nil
})

// hibdisk runs the hibdisk CLI and returns its stdout; it fails the test
// on a non-zero exit.
func hibdisk(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hibdisk %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// guestTimeout bounds one guest run: boot takes a few seconds under TCG,
// the tasks less; two VMs share two host cores under -race.
const guestTimeout = 2 * time.Minute

// startGuest boots the test guest with task and disks.
func startGuest(t *testing.T, task string, params map[string]string, disks ...qemu.Disk) *qemu.Machine {
	t.Helper()
	k := guestKit(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := qemu.Start(ctx, qemu.Config{
		Kernel: k.Kernel, Initrd: k.Initrd,
		Append: "quiet " + guestproto.Cmdline(task, params),
		Disks:  disks,
	})
	if err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	t.Cleanup(func() {
		m.Kill()
		m.Wait(context.Background())
	})
	return m
}

// waitResult waits for the guest's PASS or FAIL line and for QEMU to exit
// (flushing the served layers); it fails the test, with the console, when
// the guest did not pass.
func waitResult(t *testing.T, m *qemu.Machine, started time.Time) guestproto.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
	defer cancel()
	var res guestproto.Result
	_, err := m.WaitLine(ctx, func(line string) bool { return res.ParseLine(line) })
	elapsed := time.Since(started)
	if err == nil {
		t.Logf("guest result after %v (boot to marker)", elapsed.Round(time.Millisecond))
		// The guest powers off after the marker; give it a moment, then
		// insist.
		waitCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		select {
		case <-m.Exited():
		case <-waitCtx.Done():
			t.Errorf("QEMU still running 30s after the guest's result")
			m.Kill()
		}
	} else {
		m.Kill()
	}
	if werr := m.Wait(context.Background()); werr != nil {
		t.Errorf("machine: %v", werr)
	}
	if err != nil || !res.Passed {
		t.Fatalf("guest did not pass (err %v, reason %q, QEMU exit %d)\nconsole:\n%s\nqemu stderr:\n%s",
			err, res.Reason, m.ExitCode(), strings.Join(m.Lines(), "\n"), m.Stderr())
	}
	return res
}

// runGuest boots the guest, waits for its result and for QEMU to exit.
func runGuest(t *testing.T, task string, params map[string]string, disks ...qemu.Disk) guestproto.Result {
	t.Helper()
	started := time.Now()
	m := startGuest(t, task, params, disks...)
	return waitResult(t, m, started)
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha(b)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// writeRawBase creates a raw image of size bytes with Pattern(seed) over
// [0, dataLen).
func writeRawBase(t *testing.T, path string, size int64, seed string, dataLen int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(guestproto.PatternBytes(seed, 0, dataLen), 0); err != nil {
		t.Fatal(err)
	}
}

// openDisk opens a chain for serving and closes it when the test ends
// (closing twice is the test's own business: close explicitly before
// checking the files).
func openDisk(t *testing.T, path string) *diffdisk.Disk {
	t.Helper()
	d, err := diffdisk.Open(path, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkLayer runs hibdisk's consistency checker on a layer file.
func checkLayer(t *testing.T, path string) {
	t.Helper()
	r, err := diffdisk.Check(path)
	if err != nil {
		t.Fatalf("check %s: %v", path, err)
	}
	if !r.OK() {
		t.Fatalf("check %s: %s", path, r)
	}
}

// readChain reads n bytes at off through the chain at path.
func readChain(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	d, err := diffdisk.OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b := make([]byte, n)
	if _, err := d.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", path, off, err)
	}
	return b
}
