package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// foreignImage is an image qemu-img makes from golden.img.
type foreignImage struct {
	file, format string
	convert      []string // qemu-img convert options making it from golden.img
}

// foreignImages are the formats QEMU reads, in the variants users have.
var foreignImages = []foreignImage{
	{"v3.qcow2", "qcow2", []string{"-O", "qcow2"}},
	{"v2.qcow2", "qcow2", []string{"-O", "qcow2", "-o", "compat=0.10"}},
	{"compressed.qcow2", "qcow2", []string{"-c", "-O", "qcow2"}},
	{"zstd.qcow2", "qcow2", []string{"-c", "-O", "qcow2", "-o", "compression_type=zstd"}},
	{"subclusters.qcow2", "qcow2", []string{"-O", "qcow2", "-o", "extended_l2=on"}},
	{"g.qed", "qed", []string{"-O", "qed"}},
	{"sparse.vmdk", "vmdk", []string{"-O", "vmdk"}},
	{"stream.vmdk", "vmdk", []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}},
	{"flat.vmdk", "vmdk", []string{"-O", "vmdk", "-o", "subformat=monolithicFlat"}},
	{"g.vhdx", "vhdx", []string{"-O", "vhdx"}},
	{"g.vdi", "vdi", []string{"-O", "vdi"}},
	{"dynamic.vhd", "vpc", []string{"-O", "vpc", "-o", "force_size=on"}},
	{"fixed.vhd", "vpc", []string{"-O", "vpc", "-o", "subformat=fixed,force_size=on"}},
	{"g.parallels", "parallels", []string{"-O", "parallels"}},
}

// makeGolden makes golden.img: an ext4 filesystem of size holding
// /hello.txt, made by mkfs.ext4 -d.
func makeGolden(t *testing.T, dir, size string) string {
	t.Helper()
	root := filepath.Join(dir, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "hello.txt"), []byte("hello from a golden image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "golden.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, raw, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return raw
}

// qemuImgConvert runs qemu-img convert from golden.img, retrying LUKS's
// key timing, which fails now and then on a loaded machine ("Unable to
// get accurate CPU usage").
func qemuImgConvert(t *testing.T, dir string, im foreignImage) {
	t.Helper()
	args := append(append([]string{"convert", "-f", "raw"}, im.convert...), filepath.Join(dir, "golden.img"), filepath.Join(dir, im.file))
	for try := 1; ; try++ {
		out, err := exec.Command("qemu-img", args...).CombinedOutput()
		if err == nil {
			return
		}
		if try == 5 || !strings.Contains(string(out), "accurate CPU usage") {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
}

// TestForeignFormatsReadAsQEMUReadsThem: an image of another format, made
// by qemu-img, is read as QEMU reads it (before: info said "file format:
// raw", convert copied the qcow2 file's bytes into a layer, compare said a
// qcow2 differed from the raw image it came from). info names the format,
// compare says identical, convert to hibdisk and back to raw is
// byte-identical, inspection finds the file, and a diff layer over it
// needs -F and then reads the same.
func TestForeignFormatsReadAsQEMUReadsThem(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-nbd")
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	dir := testDir(t)
	raw := makeGolden(t, dir, "4M")
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range foreignImages {
		qemuImgConvert(t, dir, im)
		t.Run(im.file, func(t *testing.T) {
			if out := mustHib(t, dir, "info", im.file); !strings.Contains(out, "file format: "+im.format+"\n") || !strings.Contains(out, "(4194304 bytes)") {
				t.Errorf("info:\n%s", out)
			}
			if out := mustHib(t, dir, "compare", im.file, "golden.img"); !strings.Contains(out, "identical") {
				t.Errorf("compare with the raw image it came from: %s", out)
			}
			mustHib(t, dir, "map", im.file)
			if out := mustHib(t, dir, "cat", im.file, "/hello.txt"); out != "hello from a golden image\n" {
				t.Errorf("cat /hello.txt: %q", out)
			}
			base := strings.ReplaceAll(im.file, ".", "-")
			mustHib(t, dir, "convert", im.file, base+".db")
			mustHib(t, dir, "convert", "-O", "raw", base+".db", base+".raw")
			if got, err := os.ReadFile(filepath.Join(dir, base+".raw")); err != nil || !bytes.Equal(got, want) {
				t.Errorf("convert to hibdisk and back to raw is not byte-identical (%v)", err)
			}
			r := hib(t, dir, "create", "-b", im.file, base+"-job.db")
			if r.code == 0 || !strings.Contains(r.stderr, "-F "+im.format) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
				t.Errorf("create -b without -F: exit %d, %q; want one line asking for -F %s", r.code, r.stderr, im.format)
			}
			mustHib(t, dir, "create", "-b", im.file, "-F", im.format, base+"-job.db")
			if out := mustHib(t, dir, "compare", base+"-job.db", "golden.img"); !strings.Contains(out, "identical") {
				t.Errorf("compare of a diff layer over it: %s", out)
			}
			if out := mustHib(t, dir, "check", base+"-job.db"); !strings.Contains(out, "No errors were found") {
				t.Errorf("check: %s", out)
			}
		})
	}
}

// TestForeignChangedBaseCaught: a qcow2 base changed after a child was
// made over it, or a file of its own backing chain changed, is refused;
// a copy of it with the same content is accepted.
func TestForeignChangedBaseCaught(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-io", "qemu-nbd")
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	dir := testDir(t)
	makeGolden(t, dir, "16M")
	qemuIOf := func(format, cmd, file string) {
		if out, err := exec.Command("qemu-io", "-f", format, "-c", cmd, filepath.Join(dir, file)).CombinedOutput(); err != nil {
			t.Fatalf("qemu-io %s: %v: %s", cmd, err, out)
		}
	}
	// A qcow2 over golden.img, as an external snapshot's active layer.
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", "golden.img", "-F", "raw", filepath.Join(dir, "top.qcow2")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	qemuIOf("qcow2", "write -P 0x77 3M 64k", "top.qcow2")
	out := mustHib(t, dir, "info", "--backing-chain", "top.qcow2")
	if !strings.Contains(out, "backing file: golden.img") || !strings.Contains(out, "image: golden.img") && !strings.Contains(out, "/golden.img") {
		t.Errorf("info does not show the qcow2's own backing chain:\n%s", out)
	}
	mustHib(t, dir, "create", "-b", "top.qcow2", "-F", "qcow2", "job.db")
	mustHib(t, dir, "convert", "-O", "raw", "job.db", "view.raw")
	if out := mustHib(t, dir, "compare", "job.db", "top.qcow2"); !strings.Contains(out, "identical") {
		t.Fatalf("compare: %s", out)
	}
	// The same content in a new file (a copy) is accepted.
	if out, err := exec.Command("cp", filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "copy.qcow2")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.Rename(filepath.Join(dir, "copy.qcow2"), filepath.Join(dir, "top.qcow2"))
	mustHib(t, dir, "compare", "job.db", "view.raw")

	// A write into the qcow2's backing file, outside the sampled spans
	// (rawlayer.Digest), so only the whole-content digest sees it.
	saved, err := os.ReadFile(filepath.Join(dir, "golden.img"))
	if err != nil {
		t.Fatal(err)
	}
	qemuIOf("raw", "write -P 0x99 1124k 4k", "golden.img")
	for _, args := range [][]string{{"compare", "job.db", "view.raw"}, {"check", "job.db"}} {
		r := hib(t, dir, args...)
		if r.code == 0 || !strings.Contains(r.stderr+r.stdout, "changed") {
			t.Errorf("hibdisk %v after the qcow2's backing file changed: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
		}
	}
	// Put it back, for the checks at the end of the test.
	if err := os.WriteFile(filepath.Join(dir, "golden.img"), saved, 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "compare", "job.db", "view.raw")
	// The qcow2 itself written after the child was made: refused too.
	savedTop, err := os.ReadFile(filepath.Join(dir, "top.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	qemuIOf("qcow2", "write -P 0x55 1124k 4k", "top.qcow2")
	if r := hib(t, dir, "compare", "job.db", "view.raw"); r.code == 0 || !strings.Contains(r.stderr, "changed after this layer was made") {
		t.Errorf("compare after the qcow2 itself changed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if err := os.WriteFile(filepath.Join(dir, "top.qcow2"), savedTop, 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "compare", "job.db", "view.raw")
	// hibdisk never writes a foreign image: commit into it is refused.
	if r := hib(t, dir, "commit", "job.db"); r.code == 0 || !strings.Contains(r.stderr, "qcow2 base, which hibdisk only reads") {
		t.Errorf("commit into a qcow2 base: exit %d, %q", r.code, r.stderr)
	}
}

// TestForeignFormatsHibdiskDoesNotRead: formats hibdisk does not read are
// refused with one line naming them, never read as raw; an explicit -F raw
// still wins, as in QEMU.
func TestForeignFormatsHibdiskDoesNotRead(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	testenv.RequireTools(t, "sqlite3", "sqlite3")
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	dir := testDir(t)
	makeGolden(t, dir, "4M")
	images := []foreignImage{{"g.luks", "LUKS", []string{"--object", "secret,id=s0,data=hibdisk", "-O", "luks", "-o", "key-secret=s0"}}}
	qemuImgConvert(t, dir, images[0])
	sqlite := func(file, sql string) {
		if out, err := exec.Command("sqlite3", filepath.Join(dir, file), sql).CombinedOutput(); err != nil {
			t.Fatalf("sqlite3 %s: %v: %s", file, err, out)
		}
	}
	sqlite("other.db", "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	images = append(images, foreignImage{"other.db", "SQLite database", nil})

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
	// An explicit format wins: a qcow2 named raw is read as its bytes.
	qemuImgConvert(t, dir, foreignImages[0])
	mustHib(t, dir, "create", "-b", "v3.qcow2", "-F", "raw", "bytes.db")
}

// qemuNBDFor lists the pids of qemu-nbd processes serving image.
func qemuNBDFor(t *testing.T, image string) []string {
	t.Helper()
	var pids []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if strings.HasSuffix(args[0], "qemu-nbd") && slices.Contains(args, image) {
			pids = append(pids, filepath.Base(filepath.Dir(p)))
		}
	}
	return pids
}

// TestForeignBaseHeldAndKilled: while a diff layer over a qcow2 is served,
// the qcow2 is held by QEMU's own lock (a qemu-io writer is refused, not
// raced), and a serve killed with SIGKILL leaves neither its qemu-nbd nor
// a socket directory behind.
func TestForeignBaseHeldAndKilled(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-io", "qemu-nbd")
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	dir := testDir(t)
	makeGolden(t, dir, "4M")
	qemuImgConvert(t, dir, foreignImages[0])
	base := filepath.Join(dir, foreignImages[0].file)
	mustHib(t, dir, "create", "-b", base, "-F", "qcow2", "job.db")
	dirsBefore, _ := filepath.Glob(filepath.Join(os.TempDir(), "hibdisk-qemu-nbd-*"))
	serve := holdLayer(t, dir, "--socket", filepath.Join(dir, "job.sock"), "job.db")
	if pids := qemuNBDFor(t, base); len(pids) != 1 {
		t.Fatalf("qemu-nbd processes for the base while served: %v, want one", pids)
	}
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x66 0 4k", base).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lock") {
		t.Errorf("qemu-io write into the served base: %v\n%s; want it refused by QEMU's image lock", err, out)
	}
	serve.Process.Kill()
	serve.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for len(qemuNBDFor(t, base)) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if pids := qemuNBDFor(t, base); len(pids) > 0 {
		t.Errorf("qemu-nbd %v outlived the killed serve", pids)
	}
	if dirsAfter, _ := filepath.Glob(filepath.Join(os.TempDir(), "hibdisk-qemu-nbd-*")); len(dirsAfter) > len(dirsBefore) {
		t.Errorf("socket directories left behind: %v (before: %v)", dirsAfter, dirsBefore)
	}
	// The base was never written, and the layer is whole.
	if out := mustHib(t, dir, "compare", "job.db", "golden.img"); !strings.Contains(out, "identical") {
		t.Errorf("compare after the kill: %s", out)
	}
}

// TestRawBaseOfOddSize: a raw base whose size is not a whole number of
// sectors (a 7000-byte file, as a truncated download leaves one) reads
// with its tail as zeros, as qemu-img rounds it; creating a child over it
// once said the file "changed size while it was read".
func TestRawBaseOfOddSize(t *testing.T) {
	dir := testDir(t)
	data := bytes.Repeat([]byte("odd!"), 1750)
	if err := os.WriteFile(filepath.Join(dir, "odd.raw"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "create", "-F", "raw", "-b", "odd.raw", "top.db")
	mustHib(t, dir, "map", "top.db")
	mustHib(t, dir, "convert", "-O", "raw", "top.db", "out.raw")
	got, err := os.ReadFile(filepath.Join(dir, "out.raw"))
	if err != nil {
		t.Fatal(err)
	}
	want := append(data, make([]byte, len(got)-len(data))...)
	if len(got)%512 != 0 || !bytes.Equal(got, want) {
		t.Errorf("converted view: %d bytes, want odd.raw's 7000 then zeros to a sector boundary", len(got))
	}
}
