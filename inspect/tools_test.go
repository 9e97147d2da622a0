package inspect

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// sh runs a command and fails the test with its output when it fails.
func sh(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "TZ=UTC", "MTOOLS_SKIP_CHECK=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// fixedTime is every source file's mtime, so listings are reproducible.
var fixedTime = time.Date(2024, 5, 6, 7, 8, 10, 0, time.UTC)

// sourceTree writes the tree every filesystem test starts from.
func sourceTree(t *testing.T, symlinks bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "src")
	files := map[string]string{
		"hello.txt":           "hello, world\n",
		"dir/sub/deep.txt":    "deep\n",
		"dir/big.bin":         strings.Repeat("0123456789abcdef", 5000),
		"Mixed Case Name.txt": "mixed\n",
		"dir/empty.txt":       "",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "dir/sub/deep.txt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if symlinks {
		if err := os.Symlink("hello.txt", filepath.Join(dir, "link")); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"dir/sub/deep.txt", "dir/sub", "dir/big.bin", "dir/empty.txt", "dir", "hello.txt", "Mixed Case Name.txt"} {
		if err := os.Chtimes(filepath.Join(dir, p), fixedTime, fixedTime); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// makeImage builds a raw image of kind from src with the real tool.
func makeImage(t *testing.T, kind Kind, src string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), string(kind)+".img")
	truncate := func(size int64) {
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, size); err != nil {
			t.Fatal(err)
		}
	}
	fat := func(bits string, size int64) {
		testenv.RequireTools(t, "dosfstools mtools", "mkfs.vfat", "mcopy")
		truncate(size)
		sh(t, "mkfs.vfat", "-F", bits, "-n", "HIBTEST", img)
		entries, err := os.ReadDir(src)
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"-s", "-m", "-i", img}
		for _, e := range entries {
			args = append(args, filepath.Join(src, e.Name()))
		}
		sh(t, "mcopy", append(args, "::/")...)
	}
	switch kind {
	case KindExt4:
		testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
		truncate(32 << 20)
		sh(t, "mkfs.ext4", "-q", "-F", "-L", "hibtest", "-d", src, img)
	case KindFAT12:
		fat("12", 4<<20)
	case KindFAT16:
		fat("16", 32<<20)
	case KindFAT32:
		fat("32", 64<<20)
	case KindSquashfs:
		testenv.RequireTools(t, "squashfs-tools", "mksquashfs")
		sh(t, "mksquashfs", src, img, "-quiet", "-noappend", "-all-root")
	case KindISO9660:
		testenv.RequireTools(t, "xorriso", "xorriso")
		sh(t, "xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "HIBTEST", "-o", img, src)
	default:
		t.Fatalf("makeImage: unknown kind %q", kind)
	}
	return img
}

// openImage opens path (raw or layer) as an Image; both close with t.
func openImage(t *testing.T, path string) *Image {
	t.Helper()
	d, err := diffdisk.OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	im, err := Open(d, path)
	if err != nil {
		t.Fatal(err)
	}
	return im
}
