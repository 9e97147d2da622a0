package hibfile_test

import (
	"github.com/hibdisk/hibdisk/diffdisk"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"fmt"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
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

// ramImage is guest RAM for BenchmarkSaveRAM: size bytes, of which every
// page whose number is divisible by every holds pseudo-random data (and
// the rest is zero), as a booted guest's RAM file is mostly zero pages.
type ramImage struct {
	size  int64
	every int64
}

func (r ramImage) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	for pg := off / 4096 * 4096; pg < off+int64(len(p)); pg += 4096 {
		if pg/4096%r.every != 0 {
			continue
		}
		lo, hi := max(pg, off), min(pg+4096, off+int64(len(p)))
		for i := lo; i < hi; i += 8 {
			v := uint64(i)*0x9E3779B97F4A7C15 ^ uint64(i>>12)
			for j := int64(0); j < 8 && i+j < hi; j++ {
				p[i+j-off] = byte(v >> (8 * j))
			}
		}
	}
	return len(p), nil
}

// BenchmarkSaveRAM saves a machine's RAM as vm hibernate does: 512 MiB
// with a quarter of its pages non-zero (128 MiB stored) into a fresh
// layer in the test's temporary directory, one snapshot per op, through
// SaveChain on a chain that is already open (opening and closing it, and
// the background checkpoint of the WAL, are outside the measurement). The
// layer is prefaulted first, as a machine's is while it boots.
func BenchmarkSaveRAM(b *testing.B) {
	const size = 512 << 20
	img := ramImage{size: size, every: 4}
	dir := b.TempDir()
	b.SetBytes(size)
	// CPU time (user + system) of the thread that saves, per op: on a
	// shared machine the wall clock says more about the neighbours than
	// about Save.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu time.Duration
	var faults int64
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		path := filepath.Join(dir, fmt.Sprintf("ram%d.db", i))
		f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20})
		if err != nil {
			b.Fatal(err)
		}
		f.Close()
		d, err := diffdisk.Open(path, diffdisk.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Layer(0).(*sqlitelayer.File).Prefault(); err != nil {
			b.Fatal(err)
		}
		s := &hibfile.Snapshot{Source: "bench", Processes: []hibfile.Process{{PID: 1, Name: "ram", MemorySize: size,
			Mappings: []hibfile.Mapping{{Size: size, PageSize: 4096, Permissions: "rw", BlobOffset: ptr(int64(0))}}}}}
		b.StartTimer()
		before, faultsBefore := threadUsage(b)
		res, err := hibfile.SaveChain(d, s, img, nil)
		if err != nil {
			b.Fatal(err)
		}
		after, faultsAfter := threadUsage(b)
		cpu += after - before
		faults += faultsAfter - faultsBefore
		b.StopTimer()
		if err := d.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		b.ReportMetric(float64(res.ChangedBlocks*res.BlockSize)/(1<<20), "MiBstored")
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	b.ReportMetric(float64(faults)/float64(b.N), "faults/op")
}

// threadUsage is the calling thread's user and system CPU time so far,
// and its minor page faults (on these machines ~11 µs each).
func threadUsage(b *testing.B) (time.Duration, int64) {
	const rusageThread = 1 // RUSAGE_THREAD
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt
}
