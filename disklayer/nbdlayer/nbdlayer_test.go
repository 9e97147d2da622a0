package nbdlayer_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/nbdlayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sourceImage is an 8 MiB raw image with data at a few places, some of
// it unaligned to 4 KiB, and a compressible run.
func sourceImage(t *testing.T, dir string) string {
	t.Helper()
	raw := filepath.Join(dir, "src.raw")
	run(t, "qemu-img", "create", "-q", "-f", "raw", raw, "8M")
	for _, w := range []string{"write -P 0xab 0 64k", "write -P 0x11 1M 4k", "write -P 0x22 3584k 512", "write -P 0x33 7M 1M", "write -z 7200k 64k"} {
		run(t, "qemu-io", "-f", "raw", "-c", w, raw)
	}
	return raw
}

// foreignImages converts raw with qemu-img into each format, the way
// users' images are made.
func foreignImages(t *testing.T, dir, raw string) map[string]string {
	t.Helper()
	images := map[string][]string{
		"qcow2":          {"-O", "qcow2"},
		"qcow2-v2":       {"-O", "qcow2", "-o", "compat=0.10"},
		"qcow2-compress": {"-O", "qcow2", "-c"},
		"qcow2-extl2":    {"-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"},
		"qcow2-zstd":     {"-O", "qcow2", "-c", "-o", "compression_type=zstd"},
		"vmdk":           {"-O", "vmdk"},
		"vmdk-stream":    {"-O", "vmdk", "-o", "subformat=streamOptimized"},
		"vhdx":           {"-O", "vhdx"},
		"vdi":            {"-O", "vdi"},
		"vpc":            {"-O", "vpc", "-o", "force_size=on"},
		"qed":            {"-O", "qed"},
	}
	paths := map[string]string{}
	for name, args := range images {
		p := filepath.Join(dir, name+".img")
		run(t, "qemu-img", append(append([]string{"convert", "-f", "raw"}, args...), raw, p)...)
		paths[name] = p
	}
	return paths
}

func formatOf(name string) string { f, _, _ := strings.Cut(name, "-"); return f }

func TestOpenImageReadsWhatQEMUReads(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-io", "qemu-nbd")
	dir := t.TempDir()
	raw := sourceImage(t, dir)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	wantDigest, _, err := rawlayer.ContentDigest(raw)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range foreignImages(t, dir, raw) {
		t.Run(name, func(t *testing.T) {
			l, err := nbdlayer.OpenImage(p, formatOf(name))
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if l.Size() != int64(len(want)) {
				t.Fatalf("size %d, want %d", l.Size(), len(want))
			}
			got := make([]byte, len(want))
			if _, err := l.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("content differs from the raw image it was converted from")
			}
			checkExtents(t, l, want)
			if d, err := rawlayer.ViewDigest(l); err != nil || d != wantDigest {
				t.Errorf("ViewDigest %s, %v; the raw image's ContentDigest is %s", d, err, wantDigest)
			}
		})
	}
}

// checkExtents checks that l's extents cover the range without gaps,
// are sector aligned inside it, alternate in kind, and that every Zero
// run reads as zeros in want.
func checkExtents(t *testing.T, l disklayer.Layer, want []byte) {
	t.Helper()
	for _, r := range [][2]int64{{0, l.Size()}, {100, 3 << 20}, {7<<20 + 1, 4096}} {
		pos := r[0]
		var last disklayer.ExtentKind = 255
		for e, err := range l.Extents(r[0], r[1]) {
			if err != nil {
				t.Fatal(err)
			}
			if e.Off != pos || e.Len <= 0 || e.Kind == last {
				t.Fatalf("extent %+v after %d (kind %v)", e, pos, last)
			}
			if e.Off != r[0] && e.Off%int64(l.SectorSize()) != 0 {
				t.Fatalf("extent %+v not aligned to %d", e, l.SectorSize())
			}
			if e.Kind == disklayer.Absent {
				t.Fatalf("extent %+v: a base reports no Absent", e)
			}
			if e.Kind == disklayer.Zero && !bytes.Equal(want[e.Off:e.End()], make([]byte, e.Len)) {
				t.Fatalf("extent %+v reported zero holds data", e)
			}
			pos, last = e.End(), e.Kind
		}
		if pos != r[0]+r[1] {
			t.Fatalf("extents of %v end at %d", r, pos)
		}
	}
}

func TestOpenImageRefusesWrongFormat(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-nbd")
	dir := t.TempDir()
	p := filepath.Join(dir, "a.vmdk")
	run(t, "qemu-img", "create", "-q", "-f", "vmdk", p, "1M")
	_, err := nbdlayer.OpenImage(p, "qcow2")
	if err == nil || strings.Count(err.Error(), "\n") != 0 || !strings.Contains(err.Error(), "qcow2") {
		t.Fatalf("OpenImage of a vmdk as qcow2: %v, want one line naming qcow2", err)
	}
	entries, _ := filepath.Glob(filepath.Join(os.TempDir(), "hibdisk-qemu-nbd-*"))
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(e, "s")); err == nil {
			t.Logf("note: %s still exists (another test may own it)", e)
		}
	}
}

func TestChainShowsBackingFiles(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	dir := t.TempDir()
	raw := sourceImage(t, dir)
	top := filepath.Join(dir, "top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "src.raw", "-F", "raw", top)
	chain, err := nbdlayer.Chain(top, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[0].Format != "qcow2" || chain[1].Format != "raw" || chain[0].VirtualSize != 8<<20 {
		t.Fatalf("chain %+v", chain)
	}
	if st1, err1 := os.Stat(chain[1].Filename); err1 != nil || !sameFile(t, st1, raw) {
		t.Fatalf("backing file %q is not %q", chain[1].Filename, raw)
	}
}

func sameFile(t *testing.T, a os.FileInfo, path string) bool {
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}
