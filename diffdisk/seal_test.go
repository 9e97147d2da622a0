package diffdisk

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// TestSealChainBottomUp: Seal seals base, mid and top in that order,
// each child recording its parent's digest; the chain reads as before;
// a second Seal rewrites nothing.
func TestSealChainBottomUp(t *testing.T) {
	dir := testDir(t)
	top := chainFilesWriting(t, dir, 1<<20, 0, false, func(name string, d *Disk) {
		mustWrite(t, d, bytes.Repeat([]byte(name[:1]), 4096), int64(len(name))*4096)
	})
	d := mustOpen(t, top, Options{ReadOnly: true})
	before := make([]byte, 1<<20)
	if _, err := d.ReadAt(before, 0); err != nil {
		t.Fatal(err)
	}
	mustClose(t, d)
	res, err := Seal(top)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Layers) != 3 || res.Below != nil {
		t.Fatalf("Seal = %+v, want 3 layers and nothing below", res)
	}
	for i, name := range []string{"base.db", "mid.db", "top.db"} {
		l := res.Layers[i]
		if filepath.Base(l.Path) != name || l.Already {
			t.Errorf("layer %d: %+v, want %s newly sealed", i, l, name)
		}
		f, err := sqlitelayer.Open(l.Path, sqlitelayer.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		info := f.Info()
		f.Close()
		if !info.Sealed {
			t.Errorf("%s is not sealed", name)
		}
		if i > 0 && (info.Parent == nil || info.Parent.SHA256 != res.Layers[i-1].Digest) {
			t.Errorf("%s records parent %+v, want digest %s", name, info.Parent, res.Layers[i-1].Digest)
		}
	}
	d = mustOpen(t, top, Options{ReadOnly: true})
	after := make([]byte, 1<<20)
	if _, err := d.ReadAt(after, 0); err != nil {
		t.Fatal(err)
	}
	mustClose(t, d)
	if !bytes.Equal(before, after) {
		t.Error("the sealed chain reads other data")
	}
	again, err := Seal(top)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range again.Layers {
		if !l.Already || l.Digest != res.Layers[i].Digest {
			t.Errorf("second seal, layer %d: %+v, first %+v", i, l, res.Layers[i])
		}
	}
}

// TestChildOfSealedBaseKeepsOpening: sealing a base (VACUUM INTO a new
// file) leaves its uuid and generation as its child recorded them: the
// child opens writable and writes, and a new child can be made over it.
func TestChildOfSealedBaseKeepsOpening(t *testing.T) {
	dir := testDir(t)
	top := chainFilesWriting(t, dir, 1<<20, 0, false, func(name string, d *Disk) {
		mustWrite(t, d, bytes.Repeat([]byte{name[0]}, 8192), 0)
	})
	base := filepath.Join(dir, "base.db")
	if _, err := Seal(base); err != nil {
		t.Fatal(err)
	}
	d := mustOpen(t, top, Options{})
	mustWrite(t, d, bytes.Repeat([]byte{9}, 4096), 64<<10)
	mustClose(t, d)
	job := filepath.Join(dir, "job.db")
	mustCreate(t, job, CreateOptions{Backing: base})
	d = mustOpen(t, job, Options{})
	mustWrite(t, d, bytes.Repeat([]byte{8}, 4096), 0)
	mustClose(t, d)
	// The sealed base itself is refused writable: Commit into it too.
	if err := Commit(job, CommitOptions{}); err == nil {
		t.Error("commit into a sealed base succeeded")
	}
}

// TestSealLeavesRawBelow: a raw base stops nothing; Seal reports it.
func TestSealLeavesRawBelow(t *testing.T) {
	dir := testDir(t)
	top := chainFiles(t, dir, 1<<20, 0, true)
	res, err := Seal(top)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Layers) != 2 || res.Below == nil || res.Below.Format != disklayer.FormatRaw {
		t.Fatalf("Seal over a raw base = %+v", res)
	}
	if res.Layers[0].Path != filepath.Join(dir, "mid.db") {
		t.Errorf("first sealed %s, want mid.db", res.Layers[0].Path)
	}
}

// TestCheckFindsChangedSealedParent: a parent replaced by a file with
// its uuid and generation but other bytes (the copy taken before it was
// sealed) still opens, but check names the digest the child recorded.
func TestCheckFindsChangedSealedParent(t *testing.T) {
	dir := t.TempDir() // not checked at the end: the test breaks the chain
	top := chainFilesWriting(t, dir, 1<<20, 0, false, func(name string, d *Disk) {
		mustWrite(t, d, bytes.Repeat([]byte{name[0]}, 8192), 0)
	})
	base := filepath.Join(dir, "base.db")
	unsealed, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Seal(top)
	if err != nil {
		t.Fatal(err)
	}
	mid := filepath.Join(dir, "mid.db")
	if r, err := Check(mid); err != nil || !r.OK() {
		t.Fatalf("check of the sealed chain: %v, %v", r, err)
	}
	if err := os.WriteFile(base, unsealed, 0o644); err != nil {
		t.Fatal(err)
	}
	mustClose(t, mustOpen(t, top, Options{ReadOnly: true}))
	r, err := Check(mid)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || !strings.Contains(strings.Join(r.Problems, "\n"), "sealed over "+res.Layers[0].Digest) {
		t.Errorf("check of a layer whose sealed parent changed: %v", r.Problems)
	}
}
