package diffdisk

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/layertest"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
)

var simSeed = flag.Uint64("diffdisk.seed", 0, "seed for the randomized chain simulation (0: random)")

// indexMode is how a test Disk finds what each layer supplies.
type indexMode int

const (
	modeIndex   indexMode = iota // the allocation index, default regions
	modeRegions                  // the index in 8 KiB regions: many per test disk
	modeWalk                     // no index: layer by layer
)

func (m indexMode) String() string { return [...]string{"index", "regions", "walk"}[m] }

// indexModes runs test with the allocation index on (in regions of the
// default size, and small) and off, so every read path is exercised.
func indexModes(t *testing.T, test func(t *testing.T, mode indexMode)) {
	for _, mode := range []indexMode{modeIndex, modeRegions, modeWalk} {
		t.Run(mode.String(), func(t *testing.T) { test(t, mode) })
	}
}

// memStack makes depth empty memlayers of one geometry, top first; the
// base has a parent when baseHasParent is set.
func memStack(t testing.TB, size int64, sectorSize, depth int, baseHasParent bool) []*memlayer.Layer {
	t.Helper()
	layers := make([]*memlayer.Layer, depth)
	for i := range layers {
		l, err := memlayer.New(size, sectorSize, i < depth-1 || baseHasParent)
		if err != nil {
			t.Fatal(err)
		}
		layers[i] = l
	}
	return layers
}

// composeMem stacks memlayers with opts; the test closes the Disk.
func composeMem(t testing.TB, opts Options, mode indexMode, layers ...*memlayer.Layer) *Disk {
	t.Helper()
	list := make([]disklayer.Layer, len(layers))
	for i, l := range layers {
		list[i] = l
	}
	d, err := Compose(opts, list...)
	if err != nil {
		t.Fatal(err)
	}
	d.noIndex = mode == modeWalk
	if mode == modeRegions {
		d.regionBytes = 8 << 10
	}
	return d
}

func mustWrite(t testing.TB, d disklayer.Disk, p []byte, off int64) {
	t.Helper()
	if _, err := d.WriteAt(p, off); err != nil {
		t.Fatalf("WriteAt(%d bytes, %d): %v", len(p), off, err)
	}
}

func mustRead(t testing.TB, l disklayer.Layer, off, length int64) []byte {
	t.Helper()
	p := make([]byte, length)
	if _, err := l.ReadAt(p, off); err != nil {
		t.Fatalf("ReadAt(%d, %d): %v", off, length, err)
	}
	return p
}

func extentsOf(t testing.TB, l disklayer.Layer, off, length int64) []disklayer.Extent {
	t.Helper()
	var list []disklayer.Extent
	for e, err := range l.Extents(off, length) {
		if err != nil {
			t.Fatalf("Extents(%d, %d): %v", off, length, err)
		}
		list = append(list, e)
	}
	return list
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func TestConformanceMemStack(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		layertest.Run(t, memStackFactory(mode))
	})
}

func TestTombstoneMasking(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		const ss = 512
		ls := memStack(t, 8*ss, ss, 3, false)
		mustWrite(t, ls[2], fill(8*ss, 0xbb), 0) // base: all data
		mustWrite(t, ls[1], fill(2*ss, 0xcc), 2*ss)
		d := composeMem(t, Options{}, mode, ls...)
		defer d.Close()

		if err := d.Zero(ss, 2*ss); err != nil { // hides base sector 1 and mid sector 2
			t.Fatal(err)
		}
		mustWrite(t, d, make([]byte, ss), 5*ss) // an all-zero write is a tombstone too

		want := slices.Concat(fill(ss, 0xbb), make([]byte, 2*ss), fill(ss, 0xcc), fill(ss, 0xbb), make([]byte, ss), fill(2*ss, 0xbb))
		if got := mustRead(t, d, 0, 8*ss); !bytes.Equal(got, want) {
			t.Fatalf("chain reads\n%x\nwant\n%x", got, want)
		}
		wantTop := []disklayer.Extent{
			{Off: 0, Len: ss, Kind: disklayer.Absent},
			{Off: ss, Len: 2 * ss, Kind: disklayer.Zero},
			{Off: 3 * ss, Len: 2 * ss, Kind: disklayer.Absent},
			{Off: 5 * ss, Len: ss, Kind: disklayer.Zero},
			{Off: 6 * ss, Len: 2 * ss, Kind: disklayer.Absent},
		}
		if got := extentsOf(t, ls[0], 0, 8*ss); !slices.Equal(got, wantTop) {
			t.Fatalf("top extents %v, want %v", got, wantTop)
		}
		wantChain := []disklayer.Extent{
			{Off: 0, Len: ss, Kind: disklayer.Data},
			{Off: ss, Len: 2 * ss, Kind: disklayer.Zero},
			{Off: 3 * ss, Len: 2 * ss, Kind: disklayer.Data},
			{Off: 5 * ss, Len: ss, Kind: disklayer.Zero},
			{Off: 6 * ss, Len: 2 * ss, Kind: disklayer.Data},
		}
		if got := extentsOf(t, d, 0, 8*ss); !slices.Equal(got, wantChain) {
			t.Fatalf("chain extents %v, want %v", got, wantChain)
		}
		// The lower layers are untouched.
		if got := mustRead(t, ls[2], 0, 8*ss); !bytes.Equal(got, fill(8*ss, 0xbb)) {
			t.Fatal("Zero on the chain changed the base")
		}
	})
}

func TestUnalignedWriteThroughStack(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		const ss = 4096
		ls := memStack(t, 4*ss, ss, 3, false)
		mustWrite(t, ls[2], fill(4*ss, 0x11), 0)
		mustWrite(t, ls[1], fill(ss, 0x22), ss)
		d := composeMem(t, Options{}, mode, ls...)
		defer d.Close()

		// Spans the end of sector 0 (from the base), all of sector 1
		// (mid) is untouched except its head, and ends inside sector 1.
		mustWrite(t, d, fill(200, 0xee), ss-100)
		// Zero a piece in the middle of sector 3 (from the base).
		if err := d.Zero(3*ss+10, 20); err != nil {
			t.Fatal(err)
		}
		// A write inside one sector, into sector 2.
		mustWrite(t, d, []byte{1, 2, 3}, 2*ss+7)

		want := slices.Concat(
			fill(ss-100, 0x11), fill(200, 0xee), fill(ss-100, 0x22),
			fill(7, 0x11), []byte{1, 2, 3}, fill(ss-10, 0x11),
			fill(10, 0x11), make([]byte, 20), fill(ss-30, 0x11))
		if got := mustRead(t, d, 0, 4*ss); !bytes.Equal(got, want) {
			t.Fatalf("chain differs from the expected merge at byte %d", firstDifference(got, want))
		}
		// The top holds the four touched sectors in full.
		if got := mustRead(t, ls[0], 0, 4*ss); !bytes.Equal(got, want) {
			t.Fatalf("top differs from the merged sectors at byte %d", firstDifference(got, want))
		}
	})
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestReadCacheNeverOverwrites(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		const ss = 512
		ls := memStack(t, 4*ss, ss, 2, false)
		mustWrite(t, ls[1], fill(4*ss, 0xaa), 0)
		d := composeMem(t, Options{ReadCache: true}, mode, ls...)
		defer d.Close()
		mustWrite(t, d, fill(ss, 0x55), ss)
		if err := d.Zero(2*ss, ss); err != nil {
			t.Fatal(err)
		}
		// Unaligned read: the partial edge sectors are cached in full.
		got := mustRead(t, d, 10, 4*ss-20)
		want := slices.Concat(fill(ss-10, 0xaa), fill(ss, 0x55), make([]byte, ss), fill(ss-10, 0xaa))
		if !bytes.Equal(got, want) {
			t.Fatalf("read-cache read differs at %d", firstDifference(got, want))
		}
		rows := ls[0].Rows()
		wantRows := []memlayer.Row{
			{Sector: 0, Data: fill(ss, 0xaa)},
			{Sector: 1, Data: fill(ss, 0x55)},
			{Sector: 2, Data: nil},
			{Sector: 3, Data: fill(ss, 0xaa)},
		}
		if len(rows) != len(wantRows) {
			t.Fatalf("top holds %d rows, want %d", len(rows), len(wantRows))
		}
		for i := range rows {
			if rows[i].Sector != wantRows[i].Sector || !bytes.Equal(rows[i].Data, wantRows[i].Data) || (rows[i].Data == nil) != (wantRows[i].Data == nil) {
				t.Errorf("top row %d: sector %d (%d bytes), want sector %d (%d bytes)", i, rows[i].Sector, len(rows[i].Data), wantRows[i].Sector, len(wantRows[i].Data))
			}
		}
	})
}

func TestReadCacheNeedsWritableCacher(t *testing.T) {
	ls := memStack(t, 4096, 512, 2, false)
	_, err := Compose(Options{ReadCache: true, ReadOnly: true}, ls[0], ls[1])
	if !errors.Is(err, disklayer.ErrInvalid) {
		t.Fatalf("read-cache on a read-only stack: %v, want ErrInvalid", err)
	}
}

func TestReadOnlyStack(t *testing.T) {
	ls := memStack(t, 4096, 512, 2, false)
	mustWrite(t, ls[1], fill(512, 7), 512)
	d := composeMem(t, Options{ReadOnly: true}, modeIndex, ls...)
	defer d.Close()
	if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Fatalf("write on a read-only stack: %v, want ErrReadOnly", err)
	}
	if err := d.Zero(0, 512); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Fatalf("zero on a read-only stack: %v, want ErrReadOnly", err)
	}
	if got := mustRead(t, d, 0, 4096); !bytes.Equal(got, slices.Concat(make([]byte, 512), fill(512, 7), make([]byte, 3072))) {
		t.Fatal("read-only stack reads wrong content")
	}
}

func TestDeepChain(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		const ss, depth = 512, 20
		ls := memStack(t, depth*ss, ss, depth, false)
		// Layer at depth i writes sectors 0..i, so sector s is supplied
		// by the topmost layer that wrote it: depth s.
		for i, l := range ls {
			for s := 0; s <= i; s++ {
				mustWrite(t, l, fill(ss, byte(i+1)), int64(s)*ss)
			}
		}
		d := composeMem(t, Options{}, mode, ls...)
		defer d.Close()
		got := mustRead(t, d, 0, depth*ss)
		for s := range depth {
			if b := got[s*ss]; b != byte(s+1) {
				t.Errorf("sector %d reads %d, want %d (from depth %d)", s, b, s+1, s)
			}
		}
		m, err := Map(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(m) != depth {
			t.Fatalf("map has %d extents, want %d: %v", len(m), depth, m)
		}
		for s, e := range m {
			if e.Depth != s || e.Start != int64(s)*ss || e.Length != ss || e.Kind != disklayer.Data {
				t.Errorf("map extent %d is %+v, want depth %d data at %d", s, e, s, s*ss)
			}
		}
	})
}

func TestSmallerLowerLayerReadsZerosPastItsEnd(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		const ss = 512
		base, _ := memlayer.New(8*ss, ss, false)
		mid, _ := memlayer.New(4*ss, ss, true) // shrunk below its parent
		top, _ := memlayer.New(8*ss, ss, true)
		mustWrite(t, base, fill(8*ss, 0x33), 0)
		d := composeMem(t, Options{}, mode, top, mid, base)
		defer d.Close()
		want := slices.Concat(fill(4*ss, 0x33), make([]byte, 4*ss))
		if got := mustRead(t, d, 0, 8*ss); !bytes.Equal(got, want) {
			t.Fatalf("read differs at %d: base data past the middle layer's end shows through", firstDifference(got, want))
		}
		wantExt := []disklayer.Extent{{Off: 0, Len: 4 * ss, Kind: disklayer.Data}, {Off: 4 * ss, Len: 4 * ss, Kind: disklayer.Absent}}
		if got := extentsOf(t, d, 0, 8*ss); !slices.Equal(got, wantExt) {
			t.Fatalf("extents %v, want %v", got, wantExt)
		}
	})
}

func TestMixedSectorSizesSnapExtents(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		base, _ := memlayer.New(4*4096, 512, false)
		top, _ := memlayer.New(4*4096, 4096, true)
		mustWrite(t, base, fill(512, 9), 4096+512) // one 512-byte sector inside top sector 1
		d := composeMem(t, Options{}, mode, top, base)
		defer d.Close()
		want := []disklayer.Extent{
			{Off: 0, Len: 4096, Kind: disklayer.Absent},
			{Off: 4096, Len: 4096, Kind: disklayer.Data},
			{Off: 8192, Len: 8192, Kind: disklayer.Absent},
		}
		if got := extentsOf(t, d, 0, 4*4096); !slices.Equal(got, want) {
			t.Fatalf("extents %v, want %v", got, want)
		}
		// A sub-range that starts inside the mixed sector.
		want = []disklayer.Extent{{Off: 5000, Len: 8192 - 5000, Kind: disklayer.Data}, {Off: 8192, Len: 100, Kind: disklayer.Absent}}
		if got := extentsOf(t, d, 5000, 8292-5000); !slices.Equal(got, want) {
			t.Fatalf("extents %v, want %v", got, want)
		}
		// Writing half a top sector keeps the rest from the base.
		mustWrite(t, d, fill(100, 1), 4096)
		got := mustRead(t, d, 4096, 4096)
		wantData := slices.Concat(fill(100, 1), make([]byte, 412), fill(512, 9), make([]byte, 3072))
		if !bytes.Equal(got, wantData) {
			t.Fatalf("mixed-sector write reads wrong at %d", firstDifference(got, wantData))
		}
	})
}

func TestClosedStack(t *testing.T) {
	d := composeMem(t, Options{}, modeIndex, memStack(t, 4096, 512, 2, false)...)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); !errors.Is(err, disklayer.ErrClosed) {
		t.Fatalf("second Close: %v, want ErrClosed", err)
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); !errors.Is(err, disklayer.ErrClosed) {
		t.Fatalf("read after Close: %v, want ErrClosed", err)
	}
}

// TestSimulation drives a 3-deep chain with prepopulated lower layers and
// a single memlayer holding the same content (the oracle) through the
// same random operations, comparing reads and extents as it goes.
func TestSimulation(t *testing.T) {
	for _, mode := range []struct {
		name    string
		index   indexMode
		caching bool
	}{{"index", modeIndex, false}, {"regions", modeRegions, false}, {"walk", modeWalk, false},
		{"index+cache", modeIndex, true}, {"regions+cache", modeRegions, true}, {"walk+cache", modeWalk, true}} {
		t.Run(mode.name, func(t *testing.T) {
			seed := *simSeed
			if seed == 0 {
				seed = rand.Uint64()
			}
			t.Logf("seed %d (replay with -diffdisk.seed=%d)", seed, seed)
			rng := rand.New(rand.NewPCG(seed, 0))
			for _, ss := range []int{512, 4096} {
				simulate(t, rng, ss, mode.index, mode.caching)
			}
		})
	}
}

func simulate(t *testing.T, rng *rand.Rand, ss int, mode indexMode, caching bool) {
	size := int64(64 * ss)
	ls := memStack(t, size, ss, 3, false)
	oracle, _ := memlayer.New(size, ss, false)
	randomData := func(n int64) []byte {
		p := make([]byte, n)
		switch rng.IntN(3) {
		case 0: // zeros
		case 1:
			p[rng.Int64N(n)] = byte(1 + rng.IntN(255))
		default:
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
		}
		return p
	}
	randomRange := func() (int64, int64) {
		off := rng.Int64N(size)
		if rng.IntN(2) == 0 {
			off = off / int64(ss) * int64(ss)
		}
		n := 1 + rng.Int64N(min(size-off, int64(6*ss)))
		return off, n
	}
	// Populate base, then mid, then top directly, mirroring each write
	// and zero in the oracle: a layer applied over the ones below.
	for depth := 2; depth >= 0; depth-- {
		for range 20 {
			off, n := randomRange()
			if rng.IntN(4) == 0 {
				off, n = off/int64(ss)*int64(ss), (n+int64(ss)-1)/int64(ss)*int64(ss)
				n = min(n, size-off)
				if err := ls[depth].Zero(off, n); err != nil {
					t.Fatal(err)
				}
				if err := oracle.Zero(off, n); err != nil {
					t.Fatal(err)
				}
				continue
			}
			// Whole sectors only: a layer's own partial write would merge
			// with its own (absent) content, not the chain's.
			off, n = off/int64(ss)*int64(ss), (n+int64(ss)-1)/int64(ss)*int64(ss)
			n = min(n, size-off)
			p := randomData(n)
			mustWrite(t, ls[depth], p, off)
			mustWrite(t, oracle, p, off)
		}
	}
	d := composeMem(t, Options{ReadCache: caching}, mode, ls...)
	defer d.Close()
	verify := func(step int, off, n int64) {
		t.Helper()
		got, want := mustRead(t, d, off, n), mustRead(t, oracle, off, n)
		if !bytes.Equal(got, want) {
			t.Fatalf("ss %d step %d: read(%d, %d) differs from the oracle at byte %d", ss, step, off, n, off+int64(firstDifference(got, want)))
		}
		for _, e := range extentsOf(t, d, off, n) {
			if e.Kind == disklayer.Data {
				continue
			}
			if part := want[e.Off-off : e.End()-off]; !bytes.Equal(part, make([]byte, len(part))) {
				t.Fatalf("ss %d step %d: extent %v is not data but the oracle has data there", ss, step, e)
			}
		}
	}
	for step := range 400 {
		off, n := randomRange()
		switch rng.IntN(5) {
		case 0, 1:
			p := randomData(n)
			mustWrite(t, d, p, off)
			mustWrite(t, oracle, p, off)
		case 2:
			if err := d.Zero(off, n); err != nil {
				t.Fatal(err)
			}
			if err := oracle.Zero(off, n); err != nil {
				t.Fatal(err)
			}
		default:
			verify(step, off, n)
		}
	}
	verify(-1, 0, size)
	// Lower layers never change.
	for depth := 1; depth < 3; depth++ {
		if ls[depth].Size() != size {
			t.Fatalf("layer %d resized", depth)
		}
	}
}

func TestOverlay(t *testing.T) {
	r := func(off, end int64, depth int32) run {
		return run{off: off, end: end, depth: depth, kind: disklayer.Data}
	}
	upper := []run{r(10, 20, 0), r(30, 40, 0)}
	lower := []run{r(0, 15, 1), r(18, 32, 1), r(35, 50, 1), r(60, 70, 1)}
	got := overlay(upper, lower, 65)
	want := []run{r(0, 10, 1), r(10, 20, 0), r(20, 30, 1), r(30, 40, 0), r(40, 50, 1), r(60, 65, 1)}
	if !slices.Equal(got, want) {
		t.Fatalf("overlay = %v, want %v", got, want)
	}
}

func TestSectorBitmap(t *testing.T) {
	b := newSectorBitmap(200)
	b.set(3, 130)
	for s := range int64(200) {
		if got, want := b.get(s), s >= 3 && s < 130; got != want {
			t.Fatalf("bit %d = %v, want %v", s, got, want)
		}
	}
}

func ExampleNew() {
	base, _ := memlayer.New(1<<20, 4096, false)
	top, _ := memlayer.New(1<<20, 4096, true)
	base.WriteAt([]byte("golden"), 0)
	d, _ := New(top, base)
	defer d.Close()
	d.WriteAt([]byte("G"), 0)
	p := make([]byte, 6)
	d.ReadAt(p, 0)
	fmt.Println(string(p))
	// Output: Golden
}

// memStackFactory is the conformance factory for 3-deep memlayer stacks.
func memStackFactory(mode indexMode) layertest.Factory {
	return layertest.Factory{
		New: func(t *testing.T, size int64, sectorSize int, hasParent bool) disklayer.Disk {
			return composeMem(t, Options{}, mode, memStack(t, size, sectorSize, 3, hasParent)...)
		},
		SectorSizes: []int{512, 4096},
		WithParent:  true,
	}
}

func FuzzStackOps(f *testing.F) { layertest.FuzzOps(f, memStackFactory(modeIndex)) }

func FuzzStackOpsRegions(f *testing.F) { layertest.FuzzOps(f, memStackFactory(modeRegions)) }

func FuzzStackOpsWalk(f *testing.F) { layertest.FuzzOps(f, memStackFactory(modeWalk)) }

// TestConcurrentPartialWritesToOneSector: writers of different bytes of
// the same sector race through read-modify-write; every byte must survive.
func TestConcurrentPartialWritesToOneSector(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		const ss, writers = 4096, 64
		ls := memStack(t, 2*ss, ss, 3, false)
		mustWrite(t, ls[2], fill(2*ss, 0xff), 0)
		d := composeMem(t, Options{}, mode, ls...)
		defer d.Close()
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for i := range writers {
			wg.Go(func() {
				// Writer i owns bytes [i*50, i*50+50): all inside sector 0
				// except the last writers, which straddle into sector 1.
				if _, err := d.WriteAt(fill(50, byte(i)), ss-writers*50/2+int64(i)*50); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got := mustRead(t, d, 0, 2*ss)
		start := ss - writers*50/2
		for i := range writers {
			if part := got[start+i*50 : start+i*50+50]; !bytes.Equal(part, fill(50, byte(i))) {
				t.Fatalf("writer %d's bytes were lost: %x", i, part[:8])
			}
		}
		if !bytes.Equal(got[:start], fill(start, 0xff)) || !bytes.Equal(got[start+writers*50:], fill(2*ss-start-writers*50, 0xff)) {
			t.Fatal("base bytes around the writes were lost")
		}
	})
}

// TestZeroSkipsSectorsThatShowNothing: with the index, Zero writes
// tombstones only where something could show through; without it, every
// sector gets one. Both read zeros.
func TestZeroSkipsSectorsThatShowNothing(t *testing.T) {
	indexModes(t, func(t *testing.T, mode indexMode) {
		const ss = 512
		ls := memStack(t, 8*ss, ss, 3, false)
		mustWrite(t, ls[2], fill(ss, 0xbb), 0) // base: sector 0
		d := composeMem(t, Options{}, mode, ls...)
		defer d.Close()
		mustWrite(t, d, fill(ss, 0x11), 4*ss) // top: sector 4
		if err := d.Zero(0, 8*ss); err != nil {
			t.Fatal(err)
		}
		if got := mustRead(t, d, 0, 8*ss); !bytes.Equal(got, make([]byte, 8*ss)) {
			t.Fatal("chain does not read zeros after Zero")
		}
		want := []disklayer.Extent{
			{Off: 0, Len: ss, Kind: disklayer.Zero},
			{Off: ss, Len: 3 * ss, Kind: disklayer.Absent},
			{Off: 4 * ss, Len: ss, Kind: disklayer.Zero},
			{Off: 5 * ss, Len: 3 * ss, Kind: disklayer.Absent},
		}
		if mode == modeWalk {
			want = []disklayer.Extent{{Off: 0, Len: 8 * ss, Kind: disklayer.Zero}}
		}
		if got := extentsOf(t, ls[0], 0, 8*ss); !slices.Equal(got, want) {
			t.Fatalf("top extents after Zero: %v, want %v", got, want)
		}
	})
}
