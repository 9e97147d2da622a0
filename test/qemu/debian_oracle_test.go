package qemu_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// What one boot of the Debian image writes besides the tests' own units.
// The golden image was never booted, so these are first-boot and
// every-boot writes at once; the machine-id is fixed in the overlay
// (test/qemu/debian/rootfs/etc/machine-id), so systemd does not run its
// first-boot setup (preset-all, machine-id commit) and the journal's
// directory is known.
var (
	systemdBootAdded = []string{
		// systemd-tmpfiles-setup.service (tmpfiles.d/x11.conf)
		"/tmp/.ICE-unix", "/tmp/.X11-unix", "/tmp/.XIM-unix", "/tmp/.font-unix",
		// systemd-random-seed.service
		"/var/lib/systemd/random-seed",
		// timers.target: the stamps of the Persistent= timers
		"/var/lib/systemd/timers",
		"/var/lib/systemd/timers/stamp-apt-daily-upgrade.timer",
		"/var/lib/systemd/timers/stamp-apt-daily.timer",
		"/var/lib/systemd/timers/stamp-e2scrub_all.timer",
		"/var/lib/systemd/timers/stamp-fstrim.timer",
		// systemd-journald (persistent: Debian ships /var/log/journal)
		journalDir, journalDir + "/system.journal",
	}
	systemdBootChanged = []string{
		"/tmp", "/var/lib", "/var/lib/systemd", "/var/log/journal", // mtimes of the directories above
		"/var/log/wtmp", // systemd-update-utmp.service
	}
	// journalDir is named by the overlay's machine-id.
	journalDir = "/var/log/journal/6869626469736b2064656269616e0001"

	// workFiles is what hibdisk-work.service writes.
	workFiles = []string{workOut, workOut + "/done", workOut + "/file1", workOut + "/file2",
		workOut + "/file3", workOut + "/kernel", workOut + "/numbers", workOut + "/packages"}
	// tickerFiles is what hibdisk-ticker.service writes.
	tickerFiles = []string{"/var/lib/x", ticksPath}
)

func sortedUnion(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	sort.Strings(out)
	return out
}

// replayedImage is a raw copy of a layer chain on which e2fsck has
// replayed the ext4 journal: what the kernel would mount, and the oracle
// for hibdisk's own view of a hibernated (mounted) filesystem.
type replayedImage struct {
	path           string
	neededRecovery bool // the journal held committed transactions not yet in place
}

// replay exports layer as raw, notes whether its journal needs recovery
// and lets e2fsck -fy replay it (exit 1: it fixed something, which the
// free block and inode counts of a mounted filesystem always need).
func replay(t *testing.T, layer string) replayedImage {
	t.Helper()
	img := replayedImage{path: strings.TrimSuffix(layer, filepath.Ext(layer)) + ".replayed.img"}
	hibdisk(t, "convert", "-O", "raw", layer, img.path)
	out, err := exec.Command("dumpe2fs", "-h", img.path).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v: %s", img.path, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "Filesystem features:") {
			img.neededRecovery = strings.Contains(line, "needs_recovery")
		}
	}
	out, err = exec.Command("e2fsck", "-fy", img.path).CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("e2fsck -fy %s (a copy of %s): %v\n%s", img.path, layer, err, out)
	}
	return img
}

// debugfsCat reads a file of an ext4 image with e2fsprogs' debugfs.
func debugfsCat(t *testing.T, img, path string) string {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", "cat "+path, img)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs cat %s %s: %v", img, path, err)
	}
	return string(out)
}

// checkLayerCLI runs `hibdisk check` on a layer: the same checker as
// checkLayer, in the hibdisk binary rather than the race-instrumented
// test (a hibernated 1 GiB guest's layer takes seconds to check).
func checkLayerCLI(t *testing.T, path string) {
	t.Helper()
	if out, stderr, err := hibdiskTry(t, "check", path); err != nil {
		t.Errorf("hibdisk check %s: %v\n%s%s", path, err, out, stderr)
	}
}
