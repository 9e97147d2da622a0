package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// TestForeignFormatsNeverReadAsRaw: an image of another format, made by
// qemu-img, is never read as raw bytes (before: info said "file format:
// raw", convert copied the qcow2 file's bytes into a layer, compare said
// a qcow2 differed from the raw image it came from). Every read-only
// command and create -b refuse it with one line naming the format; a raw
// image, and a foreign one named raw explicitly (-F raw, as QEMU lets an
// explicit format win), still work.
func TestForeignFormatsNeverReadAsRaw(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	testenv.RequireTools(t, "sqlite3", "sqlite3")
	dir := testDir(t)
	raw := filepath.Join(dir, "golden.img")
	if out, err := exec.Command("qemu-img", "create", "-f", "raw", raw, "4M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x5a 64k 128k", raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v: %s", err, out)
	}
	images := []struct {
		file, format string
		convert      []string // qemu-img convert options making it from golden.img
	}{
		{"v3.qcow2", "qcow2", []string{"-O", "qcow2"}},
		{"v2.qcow2", "qcow2", []string{"-O", "qcow2", "-o", "compat=0.10"}},
		{"compressed.qcow2", "qcow2", []string{"-c", "-O", "qcow2"}},
		{"subclusters.qcow2", "qcow2", []string{"-O", "qcow2", "-o", "extended_l2=on"}},
		{"g.qed", "qed", []string{"-O", "qed"}},
		{"sparse.vmdk", "vmdk", []string{"-O", "vmdk"}},
		{"stream.vmdk", "vmdk", []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}},
		{"flat.vmdk", "vmdk", []string{"-O", "vmdk", "-o", "subformat=monolithicFlat"}},
		{"g.vhdx", "vhdx", []string{"-O", "vhdx"}},
		{"g.vdi", "vdi", []string{"-O", "vdi"}},
		{"dynamic.vhd", "vpc", []string{"-O", "vpc"}},
		{"fixed.vhd", "vpc", []string{"-O", "vpc", "-o", "subformat=fixed"}},
		{"g.parallels", "parallels", []string{"-O", "parallels"}},
		{"g.luks", "luks", []string{"--object", "secret,id=s0,data=hibdisk", "-O", "luks", "-o", "key-secret=s0"}},
	}
	for _, im := range images {
		args := append(append([]string{"convert", "-f", "raw"}, im.convert...), raw, filepath.Join(dir, im.file))
		// LUKS times its key derivation first, which fails now and then
		// on a loaded machine ("Unable to get accurate CPU usage"): retry.
		for try := 1; ; try++ {
			out, err := exec.Command("qemu-img", args...).CombinedOutput()
			if err == nil {
				break
			}
			if try == 5 || !strings.Contains(string(out), "accurate CPU usage") {
				t.Fatalf("qemu-img %v: %v: %s", args, err, out)
			}
		}
	}
	sqlite := func(file, sql string) {
		if out, err := exec.Command("sqlite3", filepath.Join(dir, file), sql).CombinedOutput(); err != nil {
			t.Fatalf("sqlite3 %s: %v: %s", file, err, out)
		}
	}
	// OpenVMM's disklayer_sqlite files are read (TestOpenVMM*, in
	// openvmm_test.go); another SQLite database is not an image.
	sqlite("other.db", "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	images = append(images,
		struct {
			file, format string
			convert      []string
		}{"other.db", "SQLite database", nil})

	for _, im := range images {
		for _, args := range [][]string{
			{"info", im.file},
			{"map", im.file},
			{"compare", im.file, "golden.img"},
			{"convert", im.file, "out.db"},
			{"ls", im.file, "/"},
			{"create", "-b", im.file, "job.db"},
		} {
			r := hib(t, dir, args...)
			if r.code == 0 || !strings.Contains(r.stderr, im.format) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
				t.Errorf("hibdisk %s: exit %d, stdout %q, stderr %q; want a failure of one line naming %s",
					strings.Join(args, " "), r.code, r.stdout, r.stderr, im.format)
			}
			for _, made := range []string{"out.db", "job.db"} {
				if _, err := os.Stat(filepath.Join(dir, made)); err == nil {
					t.Errorf("hibdisk %s over a %s image left %s", strings.Join(args, " "), im.format, made)
					os.Remove(filepath.Join(dir, made))
				}
			}
		}
	}
	// Raw stays raw.
	if out := mustHib(t, dir, "info", "golden.img"); !strings.Contains(out, "file format: raw") {
		t.Errorf("info of a raw image:\n%s", out)
	}
	mustHib(t, dir, "create", "-b", "golden.img", "-F", "raw", "job.db")
	if out := mustHib(t, dir, "compare", "golden.img", "job.db"); !strings.Contains(out, "identical") {
		t.Errorf("compare of a raw base and a layer over it: %s", out)
	}
}
