package qemu_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// TestBootExt4: an ext4 filesystem built on the host (mkfs.ext4 -d) and
// converted to a hibdisk layer is mounted by the guest through a diff
// layer; the guest reads the host's file and writes its own. Afterwards
// the exported raw copy passes e2fsck and debugfs reads the guest's file
// back byte for byte, and hibdisk's offline inspection (ls -R, cat, diff)
// sees what the guest wrote, with no VM.
func TestBootExt4(t *testing.T) {
	guestKit(t)
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4", "e2fsck", "debugfs")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	hello := bytes.Repeat([]byte("hello from the host\n"), 1000)
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), hello, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "fs.img")
	// Eager inode table and journal init: otherwise the guest's
	// ext4lazyinit thread writes in the background while the test runs.
	mkfs := exec.Command("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", src, img, "32M")
	if out, err := mkfs.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	base := filepath.Join(dir, "fs.db")
	hibdisk(t, "convert", img, base)
	layer := filepath.Join(dir, "job.db")
	hibdisk(t, "create", "-b", base, layer)

	const guestLen = 300 << 10
	d := openDisk(t, layer)
	res := runGuest(t, guestproto.TaskExt4, map[string]string{
		"disk": "rootfs", "read": "hello.txt", "write": "guest.bin", "seed": "ext4", "len": "307200",
	}, qemu.Disk{Name: "rootfs", Layer: d})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	checkLayer(t, layer)
	if res.Notes["read"] != sha(hello) {
		t.Errorf("guest read hello.txt with sha256 %s, want %s", res.Notes["read"], sha(hello))
	}

	out := filepath.Join(dir, "out.img")
	hibdisk(t, "convert", "-O", "raw", layer, out)
	if b, err := exec.Command("e2fsck", "-fn", out).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn of the guest's filesystem: %v\n%s", err, b)
	}
	var stdout, stderr bytes.Buffer
	cat := exec.Command("debugfs", "-R", "cat /guest.bin", out)
	cat.Stdout, cat.Stderr = &stdout, &stderr
	if err := cat.Run(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, stderr.String())
	}
	want := guestproto.PatternBytes("ext4", 0, guestLen)
	if !bytes.Equal(stdout.Bytes(), want) {
		t.Errorf("debugfs cat /guest.bin: %d bytes, want the guest's %d-byte pattern (stderr %q)", stdout.Len(), guestLen, stderr.String())
	}

	// Offline inspection of the layer the guest wrote.
	ls := hibdisk(t, "ls", "-R", layer, "/")
	for _, name := range []string{"hello.txt", "guest.bin"} {
		if !strings.Contains(ls, name) {
			t.Errorf("hibdisk ls -R of the guest's layer lacks %s:\n%s", name, ls)
		}
	}
	if got := hibdisk(t, "cat", layer, "/guest.bin"); got != string(want) {
		t.Errorf("hibdisk cat /guest.bin: %d bytes, want the guest's %d-byte pattern", len(got), guestLen)
	}
	if got := hibdisk(t, "cat", layer, "hello.txt"); got != string(hello) {
		t.Errorf("hibdisk cat hello.txt differs from the host's file")
	}
	// diff exits 1 when the images differ, so run it directly.
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	diff, _ := exec.Command(bin, "diff", base, layer).Output()
	if !strings.Contains(string(diff), "guest.bin") || strings.Contains(string(diff), "hello.txt") {
		t.Errorf("hibdisk diff base job: want guest.bin added and hello.txt unchanged:\n%s", diff)
	}
}
