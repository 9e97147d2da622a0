package main

import (
	"os/exec"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// TestCompareOffsetAsQemuImg: compare prints the line qemu-img compare
// prints for the same images: the offset of the 512-byte sector holding
// the first differing byte, also past the smaller image's end.
func TestCompareOffsetAsQemuImg(t *testing.T) {
	dir := testDir(t)
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-io")
	qemuImg(t, dir, "create", "-q", "-f", "raw", "zero.img", "1M")
	qemuImg(t, dir, "create", "-q", "-f", "raw", "big.img", "2M")
	for _, tc := range []struct {
		name   string
		size   string
		offset string
	}{
		{"at1036.img", "1M", "1036"}, {"at5000.img", "1M", "5000"}, {"at4096.img", "1M", "4096"},
		{"past-end.img", "2M", "1049612"},
	} {
		qemuImg(t, dir, "create", "-q", "-f", "raw", tc.name, tc.size)
		io := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x41 "+tc.offset+" 1", tc.name)
		io.Dir = dir
		if out, err := io.CombinedOutput(); err != nil {
			t.Fatalf("qemu-io: %v: %s", err, out)
		}
		q := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", "zero.img", tc.name)
		q.Dir = dir
		want, err := q.Output()
		if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 {
			t.Fatalf("qemu-img compare zero.img %s: %v, want exit 1", tc.name, err)
		}
		r := hib(t, dir, "compare", "zero.img", tc.name)
		if r.code != 1 || r.stdout != string(want) {
			t.Errorf("hibdisk compare zero.img %s: exit %d, stdout %q; qemu-img compare says %q (exit 1)", tc.name, r.code, r.stdout, want)
		}
	}
}
