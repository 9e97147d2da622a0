package qemu_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
)

// TestHibernatedExt4Inspected is issue 16's acceptance test of journal
// replay: a guest appends fsynced lines to a file on a mounted ext4 and
// is hibernated mid-work; offline, `hibdisk cat` of the snapshot shows
// the file exactly as e2fsck (which replays the journal) and debugfs
// show it on a raw copy of the same bytes, with every line the guest
// had fsynced, and `ls` and `diff` work without a journal warning.
func TestHibernatedExt4Inspected(t *testing.T) {
	k := guestKit(t)
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4", "e2fsck", "debugfs")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "fs.img")
	mkfs := exec.Command("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", src, img, "32M")
	if out, err := mkfs.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	hibdisk(t, "convert", img, filepath.Join(dir, "fs.db"))
	hibdisk(t, "create", "-b", filepath.Join(dir, "fs.db"), filepath.Join(dir, "job.db"))

	params := map[string]string{"disk": "rootfs", "append": "ticks", "interval-ms": "50"}
	run := startVM(t, dir, "vm", "run", "--kernel", k.Kernel, "--initrd", k.Initrd,
		"--append", guestproto.Cmdline(guestproto.TaskExt4, params), "--mem", "256M", "rootfs=job.db")
	run.count(t, 40)
	vmHibernate(t, dir, "job.db")
	run.exit(t)
	last, _ := lastCount(run.Lines())

	job := filepath.Join(dir, "job.db")
	got := hibdisk(t, "cat", job, "/ticks")
	raw := filepath.Join(dir, "snap.img")
	hibdisk(t, "convert", "-O", "raw", job, raw)
	if out, err := exec.Command("e2fsck", "-fy", raw).CombinedOutput(); err != nil {
		// 1: errors corrected (the journal replayed); more is a failure.
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() > 1 {
			t.Fatalf("e2fsck -fy: %v\n%s", err, out)
		}
	}
	var want, stderr bytes.Buffer
	cat := exec.Command("debugfs", "-R", "cat /ticks", raw)
	cat.Stdout, cat.Stderr = &want, &stderr
	if err := cat.Run(); err != nil {
		t.Fatalf("debugfs cat: %v: %s", err, stderr.String())
	}
	if got != want.String() {
		t.Fatalf("hibdisk cat /ticks (%d bytes) differs from e2fsck + debugfs cat (%d bytes)", len(got), want.Len())
	}
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	for i, l := range lines {
		if l != fmt.Sprintf("tick %d", i+1) {
			t.Fatalf("line %d of /ticks is %q", i+1, l)
		}
	}
	// Every tick printed was fsynced first; one more may have been
	// written between the last print and the stop.
	if n := int64(len(lines)); n < last || n > last+1 {
		t.Errorf("/ticks holds %d ticks, the guest had printed %d", n, last)
	}
	t.Logf("hibernated at tick %d; /ticks read offline with %d ticks, identical to e2fsck's replay", last, len(lines))
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	var ls, lsErr bytes.Buffer
	lsCmd := exec.Command(bin, "ls", job, "/")
	lsCmd.Stdout, lsCmd.Stderr = &ls, &lsErr
	if err := lsCmd.Run(); err != nil || !strings.Contains(ls.String(), "ticks") || !strings.Contains(ls.String(), "hello.txt") || lsErr.Len() != 0 {
		t.Errorf("hibdisk ls of the snapshot: %v\n%s\nstderr: %s", err, ls.String(), lsErr.String())
	}
}
