package hibfile_test

import (
	"fmt"
	"testing"

	"github.com/hibdisk/hibdisk/hibfile"
)

// BenchmarkSave1000Processes saves 1,000 processes × (50 mappings + 20
// files + 32 signals) = 102,000 metadata rows plus 1,000 register blobs
// into a fresh layer, in one transaction.
func BenchmarkSave1000Processes(b *testing.B) {
	s, img := synthetic(1, 1000, 50, 0, 1, 20, 32)
	dir := b.TempDir()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		path := newBase(b, dir, fmt.Sprintf("save%d.db", i))
		snap := *s
		b.StartTimer()
		if _, err := hibfile.Save(path, &snap, img); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(102000, "rows/op")
}

// BenchmarkPS is what `hibdisk hib ps` does on the 1,000-process
// snapshot: open the chain, find the newest snapshot, list the processes
// and order them as a tree.
func BenchmarkPS(b *testing.B) {
	s, img := synthetic(1, 1000, 50, 0, 1, 20, 32)
	path := newBase(b, b.TempDir(), "ps.db")
	mustSave(b, path, s, img)
	for b.Loop() {
		c, err := hibfile.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		v, err := c.Latest()
		if err != nil {
			b.Fatal(err)
		}
		procs, err := v.Processes()
		if err != nil {
			b.Fatal(err)
		}
		if tree, err := hibfile.Tree(procs); err != nil || len(tree) != 1000 {
			b.Fatalf("tree of %d, %v", len(tree), err)
		}
		c.Close()
	}
}

// BenchmarkCapture256MiB captures a process with 256 MiB of dirty private
// memory into a base layer (Full), then, after it changed 1% of its pages,
// into a diff layer over that (Incremental).
func BenchmarkCapture256MiB(b *testing.B) {
	const pages = 256 << 20 >> 12
	const changed = pages / 100
	h := startHelper(b, pages)
	dir := b.TempDir()
	base := newBase(b, dir, "full.db")
	b.Run("Full", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			path := newBase(b, dir, fmt.Sprintf("full%d.db", i))
			b.StartTimer()
			res := capture(b, path, h.pid())
			b.ReportMetric(float64(res.ChangedBlocks), "blocks")
		}
		b.SetBytes(256 << 20)
	})
	capture(b, base, h.pid())
	b.Run("Incremental1Percent", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			h.dirty(b, changed, 100)
			path := newDiff(b, dir, fmt.Sprintf("inc%d.db", i), base)
			b.StartTimer()
			res := capture(b, path, h.pid())
			b.ReportMetric(float64(res.ChangedBlocks), "blocks")
			b.StopTimer()
			if n := len(ownBlocks(b, path)); n < changed {
				b.Fatalf("incremental capture stored %d blocks, want at least %d", n, changed)
			}
			b.ReportMetric(float64(fileSize(b, path))/(1<<20), "layerMiB")
			b.StartTimer()
		}
		b.SetBytes(256 << 20)
	})
}
