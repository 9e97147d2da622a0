package qemu_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/vmm/qemu/debimage"
)

// The real distribution guest (issue 16, item 2): a minimal Debian 12
// built by mmdebstrap (vmm/qemu/debimage) with the files under
// test/qemu/debian/rootfs copied over it, booted by its own initrd from
// an ext4 golden layer. Two systemd targets, chosen on the kernel command
// line, do the tests' work without a network or a login:
//
//	systemd.unit=hibdisk-work.target    package query, file writes, fsync, poweroff
//	systemd.unit=hibdisk-ticker.target  "HIBDISK-TICK N TIME" every second until hibernated
const (
	debianSuite    = "bookworm"
	debianDiskSize = 2 << 30
	debianMem      = "1G"
	debianAppend   = "root=/dev/vda rw"
	workTarget     = "systemd.unit=hibdisk-work.target"
	tickerTarget   = "systemd.unit=hibdisk-ticker.target"
	workDone       = "HIBDISK-WORK DONE"
	ticksPath      = "/var/lib/x/ticks"
	workOut        = "/var/lib/hibdisk-work"
)

// debianPackages go on top of mmdebstrap's minbase.
var debianPackages = []string{"systemd-sysv", "udev", "linux-image-cloud-amd64"}

var debianOverlay = filepath.Join(repoRoot, "test", "qemu", "debian", "rootfs")

// debianGuest is the built image and its golden layer.
type debianGuest struct {
	img     *debimage.Image
	golden  string  // the image converted to a hibdisk layer, once per test binary
	convert float64 // seconds the conversion took
}

var debianBuild = sync.OnceValues(func() (*debianGuest, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	img, err := debimage.Build(ctx, debimage.Options{
		CacheDir: filepath.Join(repoRoot, "build", "debian"),
		Suite:    debianSuite,
		Packages: debianPackages,
		Overlay:  debianOverlay,
		Size:     debianDiskSize,
	})
	if err != nil {
		return nil, err
	}
	// Converted per run, not cached: the layer format is the code under
	// test.
	bin, err := hibdiskBuild()
	if err != nil {
		return nil, err
	}
	g := &debianGuest{img: img, golden: filepath.Join(binDir, "debian-golden.db")}
	started := time.Now()
	if out, err := exec.Command(bin, "convert", img.Rootfs, g.golden).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("hibdisk convert %s: %v: %s", img.Rootfs, err, out)
	}
	g.convert = time.Since(started).Seconds()
	return g, nil
})

// debian returns the Debian guest, building the image when the cache
// under build/debian has none for the current inputs.
func debian(t *testing.T) *debianGuest {
	t.Helper()
	requireQEMU(t)
	testenv.RequireTools(t, "mmdebstrap", "mmdebstrap")
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4", "e2fsck", "debugfs", "dumpe2fs")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the Debian guest is built as root (mmdebstrap, mkfs.ext4 -d): CI runs as root")
		}
		t.Skip("building the Debian guest needs root (mmdebstrap root mode); run as root")
	}
	g, err := debianBuild()
	if err != nil {
		t.Fatalf("Debian guest: %v", err)
	}
	if g.img.Built {
		t.Logf("Debian image built cold in %.0fs (%s)", g.img.BuildSeconds, g.img.Dir)
	} else {
		t.Logf("Debian image from the cache %s (its cold build took %.0fs)", g.img.Dir, g.img.BuildSeconds)
	}
	t.Logf("golden layer: hibdisk convert in %.1fs", g.convert)
	return g
}

// startDebian runs `hibdisk vm run` of the Debian guest on layer (a
// file name in dir) with a systemd target.
func startDebian(t *testing.T, g *debianGuest, dir, layer, target string) *vmProcess {
	t.Helper()
	return startVM(t, dir, "vm", "run", "--kernel", g.img.Kernel, "--initrd", g.img.Initrd,
		"--append", debianAppend+" "+target, "--mem", debianMem, layer)
}

// waitVMExit waits up to d for a vm process to end and fails the test
// unless it exited 0.
func waitVMExit(t *testing.T, p *vmProcess, d time.Duration) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("hibdisk vm: %v\nconsole tail:\n%s\nstderr:\n%s", err, tail(p.Lines(), 30), p.stderr.String())
		}
	case <-time.After(d):
		t.Fatalf("hibdisk vm still running after %v\nconsole tail:\n%s", d, tail(p.Lines(), 30))
	}
}

// linuxBooted says whether a console shows a kernel booting.
func linuxBooted(lines []string) bool {
	for _, l := range lines {
		if strings.Contains(l, "Linux version") {
			return true
		}
	}
	return false
}

// tick is one line of the ticker: its counter and the guest's clock.
type tick struct {
	n  int64
	at float64 // guest seconds since the epoch
}

var tickRE = regexp.MustCompile(`HIBDISK-TICK (\d+) (\d+\.\d+)`)

func parseTick(line string) (tick, bool) {
	m := tickRE.FindStringSubmatch(line)
	if m == nil {
		return tick{}, false
	}
	n, err1 := strconv.ParseInt(m[1], 10, 64)
	at, err2 := strconv.ParseFloat(m[2], 64)
	return tick{n, at}, err1 == nil && err2 == nil
}

// lastTick is the last tick on a console.
func lastTick(lines []string) (tick, bool) {
	var last tick
	found := false
	for _, l := range lines {
		if tk, ok := parseTick(l); ok {
			last, found = tk, true
		}
	}
	return last, found
}

// waitTick polls a console for a tick of at least n and returns the
// first such tick.
func waitTick(t *testing.T, p *vmProcess, n int64) tick {
	t.Helper()
	seen := 0
	for deadline := time.Now().Add(guestTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		lines := p.Lines()
		for _, l := range lines[seen:] {
			if tk, ok := parseTick(l); ok && tk.n >= n {
				return tk
			}
		}
		seen = len(lines)
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("hibdisk vm ended (%v) before tick %d\nconsole tail:\n%s\nstderr:\n%s", err, n, tail(lines, 30), p.stderr.String())
		default:
		}
	}
	t.Fatalf("no tick >= %d within %v\nconsole tail:\n%s\nstderr:\n%s", n, guestTimeout, tail(p.Lines(), 30), p.stderr.String())
	return tick{}
}

// parseTicks reads a ticks file ("N TIME" lines) and checks that its
// counters run 1, 2, 3, ...
//
// The file may come from a snapshot of a running machine, which is a
// crash image: ext4 may have committed the file's new size before the
// appended bytes were written back (delayed allocation), so the file can
// end in zero bytes, or in a line cut short. Those are not ticks.
func parseTicks(t *testing.T, name, content string) []tick {
	t.Helper()
	if trimmed := strings.TrimRight(content, "\x00"); len(trimmed) < len(content) {
		t.Logf("%s: ends in %d zero bytes (its size was committed before its data)", name, len(content)-len(trimmed))
		content = trimmed
	}
	if i := strings.LastIndexByte(content, '\n'); i < len(content)-1 {
		t.Logf("%s: ends in a cut line %q", name, content[i+1:])
		content = content[:i+1]
	}
	var ticks []tick
	for i, line := range strings.Split(strings.TrimSuffix(content, "\n"), "\n") {
		if line == "" && i == 0 {
			break // an empty file
		}
		tk, ok := parseTick("HIBDISK-TICK " + line)
		if !ok || tk.n != int64(i+1) {
			t.Fatalf("%s: line %d is %q, want counter %d", name, i+1, line, i+1)
		}
		ticks = append(ticks, tk)
	}
	return ticks
}

// hibdiskTry runs the hibdisk CLI and returns what it printed and its
// error, for commands a test expects may fail.
func hibdiskTry(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// fileDiff is the file part of `hibdisk diff --json`.
type fileDiff struct {
	Disk struct {
		ChangedBytes int64 `json:"changed_bytes"`
	} `json:"disk"`
	Hibernate *struct {
		ChangedBytes int64 `json:"changed_bytes"`
	} `json:"hibernate"`
	Filesystems []struct {
		Partition int        `json:"partition"`
		Added     []pathJSON `json:"added"`
		Removed   []pathJSON `json:"removed"`
		Changed   []pathJSON `json:"changed"`
	} `json:"filesystems"`
	Skipped []string `json:"skipped"`
}

type pathJSON struct {
	Path string `json:"path"`
}

// paths lists the added, removed and changed paths of the first
// filesystem (the Debian image has one, on the whole disk).
func (d fileDiff) paths() (added, removed, changed []string) {
	if len(d.Filesystems) == 0 {
		return nil, nil, nil
	}
	list := func(ps []pathJSON) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Path)
		}
		sort.Strings(out)
		return out
	}
	fs := d.Filesystems[0]
	return list(fs.Added), list(fs.Removed), list(fs.Changed)
}

// diffFiles runs `hibdisk diff --json a b` (exit 1: they differ).
func diffFiles(t *testing.T, a, b string) fileDiff {
	t.Helper()
	out, stderr, err := hibdiskTry(t, "diff", "--json", a, b)
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("hibdisk diff %s %s: %v: %s", a, b, err, stderr)
	}
	var rep fileDiff
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("hibdisk diff --json: %v\n%s", err, out)
	}
	return rep
}
