package qemu_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/hibfile/swsusp"
)

// selfHibTarget has the Debian guest tick and hibernate itself (swsusp)
// into the hibernate disk twice (test/qemu/debian/rootfs:
// hibdisk-selfhib); resume=/dev/vdb makes each later boot resume from it.
const selfHibTarget = "systemd.unit=hibdisk-selfhib.target resume=/dev/vdb"

// TestDebianSelfHibernate (issue 16, item 5, with the real guest):
// Debian hibernates itself with Linux's own swsusp into its layer's
// hibernate file (`vm run --hibernate-disk hib`, mkswap run by the
// guest), which hibdisk describes; a boot on a diff layer resumes from it
// (the ticker goes on at the next tick) and hibernates again into the
// diff layer; a third boot resumes from that and finishes.
func TestDebianSelfHibernate(t *testing.T) {
	g := debian(t)
	dir := t.TempDir()
	hibdisk(t, "create", "-b", g.golden, filepath.Join(dir, "job.db"))

	lines := selfHibDebian(t, g, dir, "job.db")
	if !consoleHas(lines, "HIBDISK-SELFHIB HIBERNATING 1") || consoleHas(lines, "HIBDISK-SELFHIB RESUMED") {
		t.Fatalf("first boot: want HIBERNATING 1 and no resume\n%s", tail(lines, 30))
	}
	before, _ := lastTick(lines)
	o1 := osImage(t, filepath.Join(dir, "job.db"))
	if o1.Source != swsusp.Source || o1.Image.Arch != "x86_64" || o1.Image.Header.Label != "hibdisk-swap" {
		t.Errorf("job.db's hibernate image: source %s, arch %s, swap header %+v", o1.Source, o1.Image.Arch, o1.Image.Header)
	}
	if show := hibdisk(t, "hib", "show", filepath.Join(dir, "job.db")); !strings.Contains(show, "source: linux-swsusp") {
		t.Errorf("hib show:\n%s", show)
	}

	hibdisk(t, "create", "-b", filepath.Join(dir, "job.db"), filepath.Join(dir, "r1.db"))
	lines = selfHibDebian(t, g, dir, "r1.db")
	if !consoleHas(lines, "HIBDISK-SELFHIB RESUMED 1") || !consoleHas(lines, "HIBDISK-SELFHIB HIBERNATING 2") {
		t.Fatalf("second boot: want RESUMED 1 and HIBERNATING 2\n%s", tail(lines, 30))
	}
	if first, ok := firstTick(lines); !ok || first.n < before.n+1 || first.n > before.n+2 {
		t.Errorf("resumed ticker starts at %d, it stopped at %d", first.n, before.n)
	}
	o2 := osImage(t, filepath.Join(dir, "r1.db"))
	if o2.Layer != filepath.Join(dir, "r1.db") {
		t.Errorf("the second image lies in %s, want r1.db", o2.Layer)
	}
	t.Logf("self-hibernate: job.db stores %.1f MiB (image of %d pages), the stacked r1.db %.1f MiB (image of %d pages)",
		float64(hibernateBytes(t, filepath.Join(dir, "job.db")))/(1<<20), o1.Image.Info.Pages,
		float64(hibernateBytes(t, filepath.Join(dir, "r1.db")))/(1<<20), o2.Image.Info.Pages)

	hibdisk(t, "create", "-b", filepath.Join(dir, "r1.db"), filepath.Join(dir, "r2.db"))
	lines = selfHibDebian(t, g, dir, "r2.db")
	if !consoleHas(lines, "HIBDISK-SELFHIB RESUMED 2") || !consoleHas(lines, "HIBDISK-SELFHIB DONE") {
		t.Fatalf("third boot: want RESUMED 2 and DONE\n%s", tail(lines, 30))
	}
	for _, layer := range []string{"job.db", "r1.db", "r2.db"} {
		checkLayerCLI(t, filepath.Join(dir, layer))
	}
}

// selfHibDebian boots the Debian guest on layer with its hibernate file
// attached as disk "hib" and waits for the machine to power off.
func selfHibDebian(t *testing.T, g *debianGuest, dir, layer string) []string {
	t.Helper()
	started := time.Now()
	p := startVM(t, dir, "vm", "run", "--kernel", g.img.Kernel, "--initrd", g.img.Initrd,
		"--append", debianAppend+" "+selfHibTarget, "--mem", debianMem, "--hibernate-disk", "hib", layer)
	waitVMExit(t, p, 5*time.Minute)
	t.Logf("%s: machine ended after %v", layer, time.Since(started).Round(time.Millisecond))
	return p.Lines()
}

func consoleHas(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}
