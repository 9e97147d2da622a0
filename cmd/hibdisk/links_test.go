package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// linkImage makes an ext4 image (mkfs.ext4 -d) holding /etc/real.txt and
// symbolic links to it: absolute, relative, through "..", through a
// linked directory, a loop and a dangling one.
func linkImage(t *testing.T, dir string) string {
	t.Helper()
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	src := filepath.Join(dir, "src")
	writeTree(t, src, map[string]string{"etc/real.txt": "hello\n", "d/keep": ""})
	for link, target := range map[string]string{
		"abs.lnk": "/etc/real.txt", "rel.lnk": "etc/real.txt", "d/up.lnk": "../etc/real.txt",
		"etclink": "/etc", "loop.lnk": "loop.lnk", "dangling.lnk": "/nowhere", "escape.lnk": "../../../etc/real.txt",
	} {
		if err := os.Symlink(target, filepath.Join(src, link)); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "links.img")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	tool(t, "", "mkfs.ext4", "-q", "-F", "-d", src, img)
	return img
}

// TestCatFollowsSymlinks: cat follows symbolic links inside the image,
// as virt-cat does (absolute targets from the image's root, ".." stopping
// there), and a loop or a dangling link is one line and exit 1.
func TestCatFollowsSymlinks(t *testing.T) {
	dir := testDir(t)
	img := linkImage(t, dir)
	for _, p := range []string{"/etc/real.txt", "/abs.lnk", "/rel.lnk", "/d/up.lnk", "/etclink/real.txt", "/escape.lnk"} {
		if got := mustHib(t, dir, "cat", img, p); got != "hello\n" {
			t.Errorf("cat %s = %q", p, got)
		}
	}
	for p, want := range map[string]string{"/loop.lnk": "symbolic links", "/dangling.lnk": "does not exist"} {
		r := hib(t, dir, "cat", img, p)
		if r.code != 1 || !strings.Contains(r.stderr, want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("cat %s: exit %d, %q", p, r.code, r.stderr)
		}
	}
	// ls -l still shows a link as a link.
	if got := mustHib(t, dir, "ls", "-l", img, "/abs.lnk"); !strings.Contains(got, "abs.lnk -> /etc/real.txt") {
		t.Errorf("ls -l of a link: %q", got)
	}
}

// TestGetForce: get refuses an existing destination file and says to add
// -f, which replaces it; a directory in the way is refused even with -f.
func TestGetForce(t *testing.T) {
	dir := testDir(t)
	img := linkImage(t, dir)
	dest := filepath.Join(dir, "real.txt")
	if err := os.WriteFile(dest, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := hib(t, dir, "get", img, "/etc/real.txt", dest)
	if r.code != 1 || !strings.Contains(r.stderr, "add -f") {
		t.Errorf("get over an existing file: exit %d, %q", r.code, r.stderr)
	}
	mustHib(t, dir, "get", "-f", img, "/etc/real.txt", dest)
	if b, err := os.ReadFile(dest); err != nil || string(b) != "hello\n" {
		t.Errorf("after get -f: %q, %v", b, err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".hibdisk-get-*")); len(m) > 0 {
		t.Errorf("get -f left %v", m)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub", "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := hib(t, dir, "get", "-f", img, "/etc", filepath.Join(dir, "sub")); r.code != 1 || !strings.Contains(r.stderr, "is a directory") {
		t.Errorf("get -f over a directory: exit %d, %q", r.code, r.stderr)
	}
}
