package diffdisk

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Benchmarks on SQLite files: a single layer holding the whole disk
// against a 3-deep chain whose data is spread over all three layers (the
// base holds every sector, the middle layer overwrites one third, the top
// another third), read at random so each layer supplies a third of the
// reads. The "walk" variants turn the allocation index off.

const (
	benchSize   = 64 << 20
	benchSector = 4096
)

type benchFixture struct {
	dir    string
	single string // one layer holding everything
	mid    string // base ← mid
	top    string // top of base ← mid ← top
	err    error
}

var (
	fixtureOnce sync.Once
	fixture     benchFixture
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.dir != "" {
		os.RemoveAll(fixture.dir)
	}
	os.Exit(code)
}

func benchFiles(b *testing.B) benchFixture {
	b.Helper()
	fixtureOnce.Do(func() { fixture = makeBenchFixture() })
	if fixture.err != nil {
		b.Fatal(fixture.err)
	}
	return fixture
}

func makeBenchFixture() (f benchFixture) {
	f.dir, f.err = os.MkdirTemp("", "diffdisk-bench")
	if f.err != nil {
		return f
	}
	rng := rand.New(rand.NewPCG(1, 2))
	fillLayer := func(path string, sector func(s int64) bool) error {
		d, err := Open(path, Options{})
		if err != nil {
			return err
		}
		buf := make([]byte, benchSector)
		for s := int64(0); s < benchSize/benchSector; s++ {
			if !sector(s) {
				continue
			}
			for i := range buf {
				buf[i] = byte(rng.Uint32() | 1)
			}
			if _, err := d.WriteAt(buf, s*benchSector); err != nil {
				d.Close()
				return err
			}
		}
		return d.Close()
	}
	f.single = filepath.Join(f.dir, "single.db")
	base, mid := filepath.Join(f.dir, "base.db"), filepath.Join(f.dir, "mid.db")
	f.mid = mid
	f.top = filepath.Join(f.dir, "top.db")
	steps := []func() error{
		func() error { return Create(f.single, CreateOptions{Size: benchSize}) },
		func() error { return fillLayer(f.single, func(int64) bool { return true }) },
		func() error { return Create(base, CreateOptions{Size: benchSize}) },
		func() error { return fillLayer(base, func(int64) bool { return true }) },
		func() error { return Create(mid, CreateOptions{Backing: base}) },
		func() error { return fillLayer(mid, func(s int64) bool { return s%3 == 1 }) },
		func() error { return Create(f.top, CreateOptions{Backing: mid}) },
		func() error { return fillLayer(f.top, func(s int64) bool { return s%3 == 2 }) },
	}
	for _, step := range steps {
		if f.err = step(); f.err != nil {
			return f
		}
	}
	return f
}

func benchRandRead(b *testing.B, path string, noIndex bool) {
	d, err := Open(path, Options{ReadOnly: false})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	d.noIndex = noIndex
	p := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(3, 4))
	// Build the index (and warm the page cache) outside the timing.
	if _, err := d.ReadAt(p, 0); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(4096)
	b.ResetTimer()
	for b.Loop() {
		off := rng.Int64N(benchSize/4096) * 4096
		if _, err := d.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
}

func BenchmarkSingleRandRead4K(b *testing.B)     { benchRandRead(b, benchFiles(b).single, false) }
func BenchmarkChain3RandRead4K(b *testing.B)     { benchRandRead(b, benchFiles(b).top, false) }
func BenchmarkChain3RandRead4KWalk(b *testing.B) { benchRandRead(b, benchFiles(b).top, true) }

func benchSeqRead(b *testing.B, path string, noIndex bool) {
	d, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	d.noIndex = noIndex
	p := make([]byte, 1<<20)
	if _, err := d.ReadAt(p, 0); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(1 << 20)
	off := int64(0)
	for b.Loop() {
		if _, err := d.ReadAt(p, off); err != nil {
			b.Fatal(err)
		}
		off = (off + 1<<20) % benchSize
	}
}

func BenchmarkSingleSeqRead1M(b *testing.B)     { benchSeqRead(b, benchFiles(b).single, false) }
func BenchmarkChain3SeqRead1M(b *testing.B)     { benchSeqRead(b, benchFiles(b).top, false) }
func BenchmarkChain3SeqRead1MWalk(b *testing.B) { benchSeqRead(b, benchFiles(b).top, true) }

// benchWrite writes into a fresh layer: a top over the fixture's middle
// layer (a 3-deep chain) or a base (single), so runs do not disturb each
// other.
func benchWrite(b *testing.B, chain bool, size int, random bool) {
	benchModify(b, chain, size, random, false)
}

// benchModify writes, or with zero calls Zero, size bytes at a time.
func benchModify(b *testing.B, chain bool, size int, random, zero bool) {
	f := benchFiles(b)
	path := filepath.Join(b.TempDir(), "w.db")
	opts := CreateOptions{Size: benchSize}
	if chain {
		opts = CreateOptions{Backing: f.mid}
	}
	if err := Create(path, opts); err != nil {
		b.Fatal(err)
	}
	d, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	p := make([]byte, size)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range p {
		p[i] = byte(rng.Uint32() | 1)
	}
	b.SetBytes(int64(size))
	off := int64(0)
	for b.Loop() {
		if random {
			off = rng.Int64N(benchSize/int64(size)) * int64(size)
		} else {
			off = (off + int64(size)) % benchSize
		}
		if zero {
			if err := d.Zero(off, int64(size)); err != nil {
				b.Fatal(err)
			}
		} else if _, err := d.WriteAt(p, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.Flush(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkSingleRandWrite4K(b *testing.B) { benchWrite(b, false, 4096, true) }
func BenchmarkChain3RandWrite4K(b *testing.B) { benchWrite(b, true, 4096, true) }
func BenchmarkSingleSeqWrite1M(b *testing.B)  { benchWrite(b, false, 1<<20, false) }
func BenchmarkChain3SeqWrite1M(b *testing.B)  { benchWrite(b, true, 1<<20, false) }

// BenchmarkChain3RandWrite512 measures unaligned writes: each one reads
// its 4 KiB sector through the chain before writing it to the top.
func BenchmarkChain3RandWrite512(b *testing.B) { benchWrite(b, true, 512, true) }

func BenchmarkIndexBuild(b *testing.B) {
	f := benchFiles(b)
	for b.Loop() {
		d, err := Open(f.top, Options{})
		if err != nil {
			b.Fatal(err)
		}
		ix, err := d.chainIndex()
		if err != nil {
			b.Fatal(err)
		}
		if err := ix.ensure(0, d.size); err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
	b.ReportMetric(float64(benchSize/benchSector), "sectors")
}

// Zero over a fresh layer: a base drops rows (there are none), a diff
// layer writes a tombstone per sector, which is what keeps lower data
// hidden. The difference is the cost of never dropping tombstones in a
// diff layer.
func BenchmarkSingleZero1M(b *testing.B) { benchModify(b, false, 1<<20, false, true) }
func BenchmarkChain3Zero1M(b *testing.B) { benchModify(b, true, 1<<20, false, true) }

// BenchmarkChain3Zero1MNothingBelow zeroes a diff layer over empty
// layers: no sector shows anything, so no tombstone is written.
func BenchmarkChain3Zero1MNothingBelow(b *testing.B) {
	dir := b.TempDir()
	base, mid, top := filepath.Join(dir, "base.db"), filepath.Join(dir, "mid.db"), filepath.Join(dir, "top.db")
	for _, step := range []func() error{
		func() error { return Create(base, CreateOptions{Size: benchSize}) },
		func() error { return Create(mid, CreateOptions{Backing: base}) },
		func() error { return Create(top, CreateOptions{Backing: mid}) },
	} {
		if err := step(); err != nil {
			b.Fatal(err)
		}
	}
	d, err := Open(top, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	b.SetBytes(1 << 20)
	off := int64(0)
	for b.Loop() {
		if err := d.Zero(off, 1<<20); err != nil {
			b.Fatal(err)
		}
		off = (off + 1<<20) % benchSize
	}
}
