package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/inspect/jbd2/jbd2test"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// inspectTime is every file's mtime, and e2fsprogs' clock
// (E2FSPROGS_FAKE_TIME), so listings and layouts are reproducible.
var inspectTime = time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC)

// tool runs a filesystem tool with a fixed clock and time zone.
func tool(t *testing.T, stdin string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "TZ=UTC", "MTOOLS_SKIP_CHECK=1",
		"E2FSPROGS_FAKE_TIME="+strconv.FormatInt(inspectTime.Unix(), 10))
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// writeTree creates files (name -> content) under dir with inspectTime.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err == nil {
			err = os.Chtimes(p, inspectTime, inspectTime)
		}
		return err
	})
}

var inspectFiles = map[string]string{
	"hello.txt":         "hello, world\n",
	"etc/hostname":      "base\n",
	"etc/motd":          "welcome\n",
	"dir/sub/deep.txt":  "deep\n",
	"dir/big.bin":       strings.Repeat("0123456789abcdef", 8192),
	"dir/keep/same.txt": "unchanged\n",
}

// ext4Image builds an ext4 raw image from inspectFiles with a fixed
// uuid, hash seed and clock.
func ext4Image(t *testing.T, dir string) string {
	t.Helper()
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4", "debugfs")
	src := filepath.Join(dir, "src")
	writeTree(t, src, inspectFiles)
	if err := os.Chmod(filepath.Join(src, "etc/motd"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "base.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	tool(t, "", "mkfs.ext4", "-q", "-F", "-L", "root", "-U", "4b1d0000-0000-4000-8000-000000000001",
		"-E", "hash_seed=4b1d0000-0000-4000-8000-000000000002,root_owner=0:0", "-d", src, img)
	return img
}

// overlay writes into a new diff layer over base every sector where
// changed differs from original: the change a guest would have made
// through the layer. It returns the diff layer's path.
func overlay(t *testing.T, dir, base, original, changed, name string) string {
	t.Helper()
	mustHib(t, dir, "create", "-b", base, "-F", "hibdisk", name)
	orig, err := os.ReadFile(original)
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(changed)
	if err != nil {
		t.Fatal(err)
	}
	d, err := diffdisk.Open(filepath.Join(dir, name), diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const unit = 4096
	for off := 0; off < len(mod); off += unit {
		if !bytes.Equal(orig[off:off+unit], mod[off:off+unit]) {
			if _, err := d.WriteAt(mod[off:off+unit], int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return name
}

// changeExt4 makes a copy of img changed with debugfs: hello.txt
// removed, etc/new.conf added, etc/hostname rewritten (same size),
// etc/motd made 0644.
func changeExt4(t *testing.T, dir, img string) string {
	t.Helper()
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	changed := filepath.Join(dir, "changed.img")
	if err := os.WriteFile(changed, data, 0o644); err != nil {
		t.Fatal(err)
	}
	host := filepath.Join(dir, "host")
	writeTree(t, host, map[string]string{"new.conf": "added=1\n", "hostname": "next\n"})
	tool(t, strings.Join([]string{
		"rm /hello.txt",
		"write " + filepath.Join(host, "new.conf") + " /etc/new.conf",
		"rm /etc/hostname",
		"write " + filepath.Join(host, "hostname") + " /etc/hostname",
		"sif /etc/hostname mtime 20240506070810",
		"sif /etc/new.conf mtime 20240506070810",
		"sif /etc/motd mode 0100644",
		"",
	}, "\n"), "debugfs", "-w", "-f", "-", changed)
	return changed
}

// TestInspectExt4Layers: an ext4 image made by mkfs.ext4, converted to a
// layer, changed through a diff layer, then listed, read, copied out and
// diffed; the base stays as it was.
func TestInspectExt4Layers(t *testing.T) {
	dir := testDir(t)
	img := ext4Image(t, dir)
	mustHib(t, dir, "convert", "-O", "hibdisk", img, "base.db")
	changed := changeExt4(t, dir, img)
	overlay(t, dir, "base.db", img, changed, "diff.db")
	before := readAll(t, filepath.Join(dir, "base.db"), filepath.Join(dir, "diff.db"))

	golden(t, "parts.txt", mustHib(t, dir, "parts", "diff.db"))
	golden(t, "parts.json", mustHib(t, dir, "parts", "--json", "diff.db"))
	golden(t, "ls-base.txt", mustHib(t, dir, "ls", "-l", "-R", "base.db", "/"))
	golden(t, "ls-diff.txt", mustHib(t, dir, "ls", "-l", "-R", "diff.db", "/"))
	if got := mustHib(t, dir, "ls", "diff.db:0", "etc"); got != "hostname\nmotd\nnew.conf\n" {
		t.Errorf("ls diff.db:0 etc = %q", got)
	}
	if got := mustHib(t, dir, "ls", "-l", "diff.db", "/etc/motd"); !strings.HasPrefix(got, "-rw-r--r-- ") || !strings.HasSuffix(got, " motd\n") {
		t.Errorf("ls -l of a file = %q", got)
	}
	for file, want := range map[string]string{"/etc/hostname": "next\n", "etc/new.conf": "added=1\n", "/dir/big.bin": inspectFiles["dir/big.bin"]} {
		if got := mustHib(t, dir, "cat", "diff.db", file); got != want {
			t.Errorf("cat diff.db %s = %d bytes, want %d", file, len(got), len(want))
		}
	}
	if got := mustHib(t, dir, "cat", "base.db", "/etc/hostname"); got != "base\n" {
		t.Errorf("cat base.db /etc/hostname = %q, want the base's", got)
	}

	mustHib(t, dir, "get", "diff.db", "/etc", "out")
	for name, want := range map[string]string{"hostname": "next\n", "new.conf": "added=1\n", "motd": "welcome\n"} {
		p := filepath.Join(dir, "out", name)
		got, err := os.ReadFile(p)
		if err != nil || string(got) != want {
			t.Errorf("get: %s = %q, %v", name, got, err)
		}
		if fi, err := os.Stat(p); err != nil || !fi.ModTime().Equal(inspectTime) || fi.Mode().Perm() != 0o644 {
			t.Errorf("get: %s mode/mtime = %v", name, fi)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "into"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "get", "diff.db", "/etc/motd", "into")
	if _, err := os.Stat(filepath.Join(dir, "into", "motd")); err != nil {
		t.Errorf("get into an existing directory: %v", err)
	}

	r := hib(t, dir, "diff", "base.db", "diff.db")
	if r.code != 1 {
		t.Fatalf("diff: exit %d, stderr %s", r.code, r.stderr)
	}
	golden(t, "diff.txt", r.stdout)
	r = hib(t, dir, "diff", "--json", "base.db", "diff.db")
	golden(t, "diff.json", r.stdout)
	var rep struct {
		FastPath    bool `json:"fast_path"`
		Filesystems []struct {
			Added   []struct{ Path string }
			Removed []struct{ Path string }
			Changed []struct {
				Path   string
				Fields []string
			}
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.FastPath || len(rep.Filesystems) != 1 {
		t.Fatalf("diff --json: fast path %v, %d filesystems", rep.FastPath, len(rep.Filesystems))
	}
	fsd := rep.Filesystems[0]
	var files []string
	for _, a := range fsd.Added {
		files = append(files, "+"+a.Path)
	}
	for _, a := range fsd.Removed {
		files = append(files, "-"+a.Path)
	}
	for _, c := range fsd.Changed {
		files = append(files, "~"+c.Path+":"+strings.Join(c.Fields, ","))
	}
	want := "+/etc/new.conf -/hello.txt ~/etc/hostname:content ~/etc/motd:mode"
	if got := strings.Join(files, " "); got != want {
		t.Errorf("diff files:\n got %s\nwant %s", got, want)
	}

	// Without the fast path (a raw image against the chain) the answer
	// is the same.
	slow := hib(t, dir, "diff", "--json", "base.img", "diff.db")
	if got, want := strings.Replace(slow.stdout, `"fast_path": false`, `"fast_path": true`, 1), r.stdout; got != noDatastore(stripHibernate(want)) {
		t.Errorf("diff raw vs chain differs from the fast path:\n%s", slow.stdout)
	}
	if r := hib(t, dir, "diff", "diff.db", "diff.db"); r.code != 0 {
		t.Errorf("diff of an image with itself: exit %d\n%s", r.code, r.stdout)
	}
	after := readAll(t, filepath.Join(dir, "base.db"), filepath.Join(dir, "diff.db"))
	if !bytes.Equal(before, after) {
		t.Error("read-only inspection changed a layer file")
	}
}

// stripHibernate turns a layer-vs-layer report into what a raw-vs-layer
// report says: there is no hibernate file to compare.
// noDatastore is a diff report as it reads when one side has no
// datastore (a raw image).
func noDatastore(s string) string {
	return strings.Replace(s, `"datastore": []`, `"datastore": null`, 1)
}

func stripHibernate(s string) string {
	i := strings.Index(s, `"hibernate": {`)
	if i < 0 {
		return s
	}
	j := strings.Index(s[i:], "\n  },\n")
	return s[:i] + `"hibernate": null,` + "\n" + s[i+j+len("\n  },\n"):]
}

func readAll(t *testing.T, paths ...string) []byte {
	t.Helper()
	var all []byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

// TestInspectFATLayer: a FAT32 image made by mkfs.vfat and mcopy, changed
// by mtools in a copy and applied through a diff layer.
func TestInspectFATLayer(t *testing.T) {
	testenv.RequireTools(t, "dosfstools mtools", "mkfs.vfat", "mcopy", "mdel")
	dir := testDir(t)
	src := filepath.Join(dir, "src")
	writeTree(t, src, map[string]string{"BOOT/config.txt": "timeout=5\n", "readme.txt": "fat\n"})
	img := filepath.Join(dir, "fat.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	tool(t, "", "mkfs.vfat", "-F", "32", "-i", "4b1d0001", "-n", "EFI", img)
	tool(t, "", "mcopy", "-s", "-m", "-i", img, filepath.Join(src, "BOOT"), filepath.Join(src, "readme.txt"), "::/")
	mustHib(t, dir, "convert", "-O", "hibdisk", img, "fat.db")
	data, _ := os.ReadFile(img)
	changed := filepath.Join(dir, "changed.img")
	if err := os.WriteFile(changed, data, 0o644); err != nil {
		t.Fatal(err)
	}
	writeTree(t, filepath.Join(dir, "host"), map[string]string{"new.txt": "new\n"})
	tool(t, "", "mdel", "-i", changed, "::/readme.txt")
	tool(t, "", "mcopy", "-m", "-i", changed, filepath.Join(dir, "host", "new.txt"), "::/BOOT/new.txt")
	overlay(t, dir, "fat.db", img, changed, "fatdiff.db")

	if got := mustHib(t, dir, "ls", "-R", "fatdiff.db", "/"); got != "/BOOT\n/BOOT/config.txt\n/BOOT/new.txt\n" {
		t.Errorf("ls -R fatdiff.db / = %q", got)
	}
	if got := mustHib(t, dir, "cat", "fatdiff.db", "/boot/CONFIG.TXT"); got != "timeout=5\n" {
		t.Errorf("cat with other case = %q", got)
	}
	if got := mustHib(t, dir, "parts", "fatdiff.db"); !strings.Contains(got, "fat32  EFI") {
		t.Errorf("parts = %q", got)
	}
	r := hib(t, dir, "diff", "fat.db", "fatdiff.db")
	if !strings.Contains(r.stdout, "  + /BOOT/new.txt\n  - /readme.txt\n") {
		t.Errorf("diff fat:\n%s", r.stdout)
	}
}

// TestInspectBadInput: each bad input is one clear line and a non-zero
// exit.
func TestInspectBadInput(t *testing.T) {
	dir := testDir(t)
	img := ext4Image(t, dir)
	mustHib(t, dir, "convert", "-O", "hibdisk", img, "base.db")
	mustHib(t, dir, "create", "-s", "16M", "blank.db")
	data, _ := os.ReadFile(img)
	copy(data[1024+0x20:], []byte{0, 0, 0, 0}) // s_blocks_per_group = 0
	if err := os.WriteFile(filepath.Join(dir, "corrupt.img"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cat", "base.db", "/no/such"}, "hibdisk cat: /no/such: file does not exist\n"},
		{[]string{"ls", "base.db", "/hello.txt/x"}, "hibdisk ls: /hello.txt/x: /hello.txt is not a directory: file does not exist\n"},
		{[]string{"cat", "base.db", "/etc"}, "hibdisk cat: /etc: is a directory\n"},
		{[]string{"ls", "base.db:2", "/"}, "hibdisk ls: base.db: partition 2: the disk has no partition table (use partition 0 or none for the whole disk): no such partition\n"},
		{[]string{"ls", "blank.db", "/"}, "hibdisk ls: blank.db: whole disk: no recognisable filesystem (not FAT, ext2/3/4, ISO9660 or squashfs)\n"},
		{[]string{"ls", "missing.db", "/"}, ""},
	} {
		r := hib(t, dir, c.args...)
		if r.code == 0 || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want one line and non-zero", c.args, r.code, r.stderr)
		}
		if c.want != "" && r.stderr != c.want {
			t.Errorf("%v: stderr\n %q\nwant\n %q", c.args, r.stderr, c.want)
		}
	}
	r := hib(t, dir, "ls", "corrupt.img", "/")
	if r.code == 0 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "ext4 superblock does not parse") || !strings.HasSuffix(r.stderr, "corrupt filesystem\n") {
		t.Errorf("corrupt superblock: exit %d, stderr %q", r.code, r.stderr)
	}
	// A partitioned disk: an index past the table names what exists.
	testenv.RequireTools(t, "fdisk", "sfdisk")
	disk := filepath.Join(dir, "mbr.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}
	tool(t, "label: dos\nstart=2048, size=65536, type=83\n", "sfdisk", "--quiet", disk)
	r = hib(t, dir, "ls", "mbr.img:7", "/")
	if r.stderr != "hibdisk ls: mbr.img: partition 7: the mbr table has partitions 1: no such partition\n" {
		t.Errorf("partition out of range: %q", r.stderr)
	}
}

// TestInspectNeedsRecovery: a filesystem whose newest changes are only
// in its journal (written there by debugfs, needs_recovery set) is shown
// replayed, without a warning; a journal that cannot be replayed is
// shown as on disk, and the warning says why.
func TestInspectNeedsRecovery(t *testing.T) {
	dir := testDir(t)
	img := ext4Image(t, dir)
	tx := jbd2test.Changes(t, img, "rm /etc/hostname", "write "+writeHost(t, dir, "live\n")+" /etc/hostname", "mkdir /etc/new")
	jbd2test.WriteJournal(t, img, "-c", tx)
	r := hib(t, dir, "cat", img, "/etc/hostname")
	if r.code != 0 || r.stderr != "" || r.stdout != "live\n" {
		t.Errorf("replayed: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = hib(t, dir, "ls", img, "/etc")
	if r.code != 0 || r.stdout != "hostname\nmotd\nnew\n" {
		t.Errorf("replayed ls: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// Damage the journal superblock's checksum: no replay, one warning.
	jbd2test.DamageSuperblock(t, img)
	r = hib(t, dir, "cat", img, "/etc/hostname")
	if r.code != 0 || r.stdout != "base\n" || !strings.Contains(r.stderr, "hibdisk cat: warning: ext4 journal needs recovery but cannot be replayed (journal superblock checksum") {
		t.Errorf("damaged journal: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func writeHost(t *testing.T, dir, content string) string {
	t.Helper()
	p := filepath.Join(dir, "host-"+strconv.Itoa(len(content)))
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
