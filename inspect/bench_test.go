package inspect

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
)

// The performance targets, measured here (no timing asserts):
// ls -R over 10,000 ext4 files, and a diff of two 1 GiB layers that
// differ in 10 files, on the fast path (a diff layer over its base) and
// without it (the raw image against the chain).

// BenchmarkWalk10k walks an ext4 layer holding 10,000 files in 100
// directories, as `hibdisk ls -R -l` does.
func BenchmarkWalk10k(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	for d := range 100 {
		sub := filepath.Join(src, fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := range 100 {
			if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%03d", f)), []byte(sub), 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	img := benchImage(b, dir, src, "256M")
	layer := filepath.Join(dir, "walk.db")
	convert(b, img, layer)
	b.ResetTimer()
	for b.Loop() {
		d, err := diffdisk.OpenImage(layer)
		if err != nil {
			b.Fatal(err)
		}
		im, _ := Open(d, layer)
		f, err := im.FS(0)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		if err := f.Walk("/", func(Entry) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
		if n < 10_000 {
			b.Fatalf("walked %d entries", n)
		}
		d.Close()
	}
}

// BenchmarkDiff1GiB diffs a 1 GiB ext4 layer holding 512 MiB of files
// against a diff layer over it in which 10 files were rewritten.
func BenchmarkDiff1GiB(b *testing.B) {
	base, changed, img := diffFixture(b)
	b.Run("fast-path", func(b *testing.B) { benchDiff(b, base, changed) })
	b.Run("raw-vs-chain", func(b *testing.B) { benchDiff(b, img, changed) })
}

func benchDiff(b *testing.B, pathA, pathB string) {
	for b.Loop() {
		a, err := diffdisk.OpenImage(pathA)
		if err != nil {
			b.Fatal(err)
		}
		c, err := diffdisk.OpenImage(pathB)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := Diff(a, c)
		if err != nil {
			b.Fatal(err)
		}
		if n := len(rep.Filesystems); n != 1 || len(rep.Filesystems[0].Changed) != 10 {
			b.Fatalf("report: %+v", rep.Filesystems)
		}
		a.Close()
		c.Close()
	}
}

func diffFixture(b *testing.B) (base, changed, img string) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 512<<10)
	for i := range 1024 {
		rand.Read(chunk)
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%04d.bin", i)), chunk, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	img = benchImage(b, dir, src, "1G")
	base = filepath.Join(dir, "base.db")
	convert(b, img, base)

	// Rewrite 10 files in a copy with debugfs, then apply the changed
	// blocks through a diff layer over base.
	modified := filepath.Join(dir, "modified.img")
	run(b, "", "cp", "--sparse=always", img, modified)
	var script strings.Builder
	for i := range 10 {
		rand.Read(chunk)
		p := filepath.Join(dir, fmt.Sprintf("new%d", i))
		if err := os.WriteFile(p, chunk, 0o644); err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&script, "rm /f%04d.bin\nwrite %s /f%04d.bin\n", i*100, p, i*100)
	}
	run(b, script.String(), "debugfs", "-w", "-f", "-", modified)
	changed = filepath.Join(dir, "changed.db")
	if err := diffdisk.Create(changed, diffdisk.CreateOptions{Backing: base, BackingFormat: "hibdisk"}); err != nil {
		b.Fatal(err)
	}
	d, err := diffdisk.Open(changed, diffdisk.Options{})
	if err != nil {
		b.Fatal(err)
	}
	fo, err := os.Open(img)
	if err != nil {
		b.Fatal(err)
	}
	defer fo.Close()
	fm, err := os.Open(modified)
	if err != nil {
		b.Fatal(err)
	}
	defer fm.Close()
	po, pm := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += 1 << 20 {
		n, err := io.ReadFull(fo, po)
		if n == 0 {
			break
		}
		if _, err := io.ReadFull(fm, pm[:n]); err != nil {
			b.Fatal(err)
		}
		for u := 0; u < n; u += 4096 {
			if !bytes.Equal(po[u:u+4096], pm[u:u+4096]) {
				if _, err := d.WriteAt(pm[u:u+4096], off+int64(u)); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err != nil {
			break
		}
	}
	if err := d.Close(); err != nil {
		b.Fatal(err)
	}
	return base, changed, img
}

func benchImage(b *testing.B, dir, src, size string) string {
	img := filepath.Join(dir, "fs.img")
	run(b, "", "truncate", "-s", size, img)
	run(b, "", "mkfs.ext4", "-q", "-F", "-d", src, img)
	return img
}

func convert(b *testing.B, img, layer string) {
	d, err := diffdisk.OpenImage(img)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if err := diffdisk.Convert(d, layer, diffdisk.ConvertOptions{}); err != nil {
		b.Fatal(err)
	}
}

func run(b *testing.B, stdin, name string, args ...string) {
	b.Helper()
	if _, err := exec.LookPath(name); err != nil {
		b.Skipf("%s not found; install it with: apt-get install e2fsprogs", name)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out)
	}
}
