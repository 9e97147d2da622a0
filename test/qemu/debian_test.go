package qemu_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// debianRun is what the Debian subtests hand on to each other, and the
// numbers they measure (issue 16, item 3 starts from them).
type debianRun struct {
	g   *debianGuest
	dir string

	// workDone is closed when the work subtest ends: the ticker, booted
	// alongside, is hibernated only then, so that the numbers measured
	// are not those of two guests sharing the CPUs.
	workDone      chan struct{}
	workOK, hibOK bool
	last          tick          // the last tick before the first hibernate
	r1Last        tick          // the last tick of the machine resumed on r1.db
	snap          replayedImage // tick.db with its journal replayed by e2fsck
	ticks         []tick        // the ticks file of snap

	mu    sync.Mutex
	stats []debianNumber // in the order measured
}

type debianNumber struct{ what, value string }

func (r *debianRun) measured(t *testing.T, what, format string, args ...any) {
	t.Helper()
	v := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.stats = append(r.stats, debianNumber{what, v})
	r.mu.Unlock()
	t.Logf("%s: %s", what, v)
}

func (r *debianRun) path(name string) string { return filepath.Join(r.dir, name) }

// TestDebian: the real distribution guest (issue 16, item 2). A work unit
// boots from a diff layer over the golden image, writes, powers off, and
// the diff names its files and systemd's; a ticking service is
// hibernated, resumed (no reboot, the counter goes on), snapshotted
// again stacked, and resumed twice at once; the snapshots are compared
// offline, file by file.
func TestDebian(t *testing.T) {
	r := &debianRun{g: debian(t), dir: t.TempDir(), workDone: make(chan struct{})}
	if r.g.img.Built {
		r.measured(t, "image build (cold)", "%.0f s", r.g.img.BuildSeconds)
	}
	r.measured(t, "golden layer (hibdisk convert)", "%.1f s", r.g.convert)
	if size := layerInfo(t, r.g.golden).DiskSize; size != debianDiskSize {
		t.Fatalf("the golden layer is %d bytes, want %d", size, debianDiskSize)
	}
	// The two boots take most of the time: they run at once.
	t.Run("boot", func(t *testing.T) {
		t.Run("work", func(t *testing.T) {
			t.Parallel()
			defer close(r.workDone)
			r.testWork(t)
			r.workOK = !t.Failed()
		})
		t.Run("hibernate", func(t *testing.T) {
			t.Parallel()
			r.testHibernate(t)
			r.hibOK = !t.Failed()
		})
	})
	if r.workOK && r.hibOK {
		t.Run("diff", r.testDiff)
	}
	if r.hibOK {
		t.Run("branches", r.testBranches)
	}
	var table strings.Builder
	for _, s := range r.stats {
		fmt.Fprintf(&table, "\n  %-40s %s", s.what, s.value)
	}
	t.Logf("Debian guest (%s RAM, %d GiB disk, TCG):%s", debianMem, debianDiskSize>>30, table.String())
}

// testWork boots hibdisk-work.target on job.db: it powers off by itself,
// and the diff against the golden layer is exactly its files and what
// systemd writes on a boot.
func (r *debianRun) testWork(t *testing.T) {
	job := r.path("job.db")
	hibdisk(t, "create", "-b", r.g.golden, job)
	started := time.Now()
	p := startDebian(t, r.g, r.dir, "job.db", workTarget)
	waitVMExit(t, p, guestTimeout)
	r.measured(t, "boot to work-unit poweroff (2 guests booting)", "%.1f s", time.Since(started).Seconds())
	if !hasLine(p.Lines(), workDone) {
		t.Fatalf("the work unit did not finish (no %q)\nconsole tail:\n%s", workDone, tail(p.Lines(), 40))
	}
	checkLayerCLI(t, job)

	added, removed, changed := diffFiles(t, r.g.golden, job).paths()
	if d := cmp.Diff(sortedUnion(systemdBootAdded, workFiles), added); d != "" {
		t.Errorf("diff golden job: added files (-want +got):\n%s", d)
	}
	if d := cmp.Diff(sortedUnion(systemdBootChanged), changed); d != "" {
		t.Errorf("diff golden job: changed files (-want +got):\n%s", d)
	}
	if len(removed) > 0 {
		t.Errorf("diff golden job: removed %q", removed)
	}
	r.checkWorkFiles(t, job)
}

func hasLine(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// checkWorkFiles reads what the work unit wrote through hibdisk cat.
func (r *debianRun) checkWorkFiles(t *testing.T, job string) {
	var seq strings.Builder
	for i := 1; i <= 100000; i++ {
		fmt.Fprintf(&seq, "%d\n", i)
	}
	want := map[string]string{
		"numbers": seq.String(),
		"kernel":  r.g.img.Release + "\n",
	}
	for i := 1; i <= 3; i++ {
		want[fmt.Sprintf("file%d", i)] = fmt.Sprintf("file %d of the work unit\n", i)
	}
	packages := installedPackages(t, r.g.golden)
	want["packages"] = strings.Join(packages, "\n") + "\n"
	want["done"] = fmt.Sprintf("packages %d\n", len(packages))
	for name, content := range want {
		got := hibdisk(t, "cat", job, workOut+"/"+name)
		if name == "packages" {
			got = sortLines(got)
		}
		if got != content {
			t.Errorf("%s/%s: %d bytes, want %d:\n%s", workOut, name, len(got), len(content), cmp.Diff(content, got))
		}
	}
}

// installedPackages is "NAME VERSION" of every package dpkg's status
// file in image lists as installed, sorted: what dpkg-query -W prints.
func installedPackages(t *testing.T, image string) []string {
	t.Helper()
	var out []string
	for _, para := range strings.Split(hibdisk(t, "cat", image, "/var/lib/dpkg/status"), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(para, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok {
				fields[k] = v
			}
		}
		if fields["Status"] == "install ok installed" {
			out = append(out, fields["Package"]+" "+fields["Version"])
		}
	}
	sort.Strings(out)
	if len(out) < 50 {
		t.Fatalf("%s: only %d installed packages in /var/lib/dpkg/status", image, len(out))
	}
	return out
}

func sortLines(s string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}
