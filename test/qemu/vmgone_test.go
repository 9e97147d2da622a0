package qemu_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
)

// shmRAMFiles lists hibdisk's RAM files in /dev/shm.
func shmRAMFiles(t *testing.T) map[string]bool {
	t.Helper()
	names, err := filepath.Glob("/dev/shm/hibdisk-ram-*")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}

// TestVMKilledLeavesNothing: a running machine's RAM file is unlinked as
// soon as QEMU holds it, so `vm run` killed with SIGKILL leaves nothing
// in /dev/shm; `vm hibernate` of the dead machine says it is gone, in
// one line, and removes its stale state file and socket directories.
func TestVMKilledLeavesNothing(t *testing.T) {
	k := guestKit(t)
	dir := t.TempDir()
	hibdisk(t, "create", "-s", fmt.Sprint(hibDiskSize), filepath.Join(dir, "job.db"))
	before := shmRAMFiles(t)
	run := startVM(t, dir, "vm", "run", "--kernel", k.Kernel, "--initrd", k.Initrd,
		"--append", guestproto.Cmdline(guestproto.TaskCounter, counterParams()), "--mem", fmt.Sprintf("%dM", hibGuestMiB), "data=job.db")
	run.count(t, 3)
	for f := range shmRAMFiles(t) {
		if !before[f] {
			t.Errorf("%s is in /dev/shm while the machine runs: its RAM file should be unlinked once QEMU holds it", f)
		}
	}
	state := filepath.Join(dir, "job.db.vm.json")
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("no state file while running: %v", err)
	}
	run.cmd.Process.Kill()
	<-run.done
	run.done <- nil // for the cleanup

	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "vm", "hibernate", "job.db")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	msg := strings.TrimSpace(stderr.String())
	if err == nil || !strings.Contains(msg, "is gone") || strings.Count(msg, "\n") != 0 {
		t.Fatalf("vm hibernate of a killed machine: %v, %q; want one line saying it is gone", err, msg)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("the stale state file is still there (%v)", err)
	}
	for f := range shmRAMFiles(t) {
		if !before[f] {
			t.Errorf("%s left in /dev/shm by the killed machine", f)
		}
	}
	// The layer is usable: the next run may start at once.
	checkLayer(t, filepath.Join(dir, "job.db"))
}
