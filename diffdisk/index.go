package diffdisk

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/hibdisk/hibdisk/disklayer"
)

// Index limits. Past them the Disk reads layer by layer instead: slower
// for deep chains, but bounded in memory.
var (
	// regionBytes is how much of the disk the index covers per step:
	// a region is indexed the first time something touches it, so the
	// first read costs the rows of its region, not of the whole base.
	// (Built whole on first use, the index of a chain over a base holding
	// 4 GiB of data took 2.6 s before the first 4 KiB read was
	// answered.) A multiple of every sector size.
	regionBytes int64 = 64 << 20
	// maxIndexRuns bounds the runs kept for the immutable layers, over
	// all regions (24 bytes each). A region that would pass it is read
	// layer by layer.
	maxIndexRuns int64 = 1 << 20
	// maxHeldSectors bounds the top-sector bitmap (one bit per sector:
	// 16 MiB at the limit, a 512 GiB disk of 4 KiB sectors).
	maxHeldSectors int64 = 1 << 27
	// maxIndexRegions bounds the regions of an index (4 TiB of 64 MiB
	// regions); a larger disk is read layer by layer. The hibernate
	// file's 64 TiB address space, almost all of it empty, made a
	// million regions, and the Extents of the whole file (diff, report)
	// asked every layer about each of them: 5.8 s for two empty layers,
	// against one query per layer walking.
	maxIndexRegions int64 = 1 << 16
)

// chainIndex lets a read go straight to the layer that supplies it.
//
// The layers from depth `from` down cannot change while the Disk is open,
// so their combined allocation is computed once per region, as sorted
// runs, when the region is first used. The top of a writable Disk changes
// only through the Disk, which sets a bit in held for every sector it
// writes, zeroes or fills; a region's bits for what the top held before
// are set when the region is indexed, and the bits of a region are only
// trusted once it is (bits are only ever set, so a write that lands in a
// region while it is being indexed is marked by its writer either way).
type chainIndex struct {
	from    int // depth of the first immutable layer: 1, or 0 when read-only
	layers  []disklayer.Layer
	size    int64
	held    *sectorBitmap // nil when the disk has too many sectors
	ss      int64
	rb      int64 // bytes per region (regionBytes)
	regions []indexRegion
	budget  atomic.Int64 // runs regions may still keep (maxIndexRuns)
}

// indexRegion is the index of regionBytes of the disk.
type indexRegion struct {
	mu    sync.Mutex  // serialises the build
	built atomic.Bool // runs, ok and the region's held bits are set
	runs  []run       // non-absent runs of the view of layers[from:] in the region, sorted
	ok    bool        // runs is complete (false: too many runs, walk instead)
}

// run is a range that one layer supplies: its data, or a tombstone.
type run struct {
	off, end int64
	depth    int32
	kind     disklayer.ExtentKind
}

// chainIndex returns the Disk's index, made on first use (its regions
// are built when used), or nil when the Disk has a single layer (nothing
// to index), more than maxIndexRegions regions, or indexing is off.
func (d *Disk) chainIndex() (*chainIndex, error) {
	rb := regionBytes
	if d.regionBytes > 0 {
		rb = d.regionBytes
	}
	rb = max(rb/d.sectorSize, 1) * d.sectorSize // whole sectors
	if len(d.layers) == 1 || d.noIndex || (d.size+rb-1)/rb > maxIndexRegions {
		return nil, nil
	}
	d.indexOnce.Do(func() {
		ix := &chainIndex{from: 1, layers: d.layers, size: d.size, ss: d.sectorSize, rb: rb}
		if d.top == nil {
			ix.from = 0
		}
		if sectors := d.size / d.sectorSize; ix.from == 1 && sectors <= maxHeldSectors {
			ix.held = newSectorBitmap(sectors)
		}
		ix.regions = make([]indexRegion, (d.size+ix.rb-1)/ix.rb)
		ix.budget.Store(maxIndexRuns)
		d.index = ix
	})
	return d.index, nil
}

// region returns region i, indexing it first if it is not yet. A failed
// build is not kept: the next use tries again.
func (ix *chainIndex) region(i int64) (*indexRegion, error) {
	r := &ix.regions[i]
	if r.built.Load() {
		return r, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.built.Load() {
		return r, nil
	}
	off := i * ix.rb
	end := min(off+ix.rb, ix.size)
	runs, ok, err := resolveRuns(ix.layers, ix.from, off, end, ix.budget.Load())
	if err != nil {
		return nil, err
	}
	if ok && ix.budget.Add(-int64(len(runs))) < 0 {
		// Another region took the budget meanwhile.
		ix.budget.Add(int64(len(runs)))
		runs, ok = nil, false
	}
	if ix.held != nil {
		// Every row the top holds in the region must have its bit before
		// any read trusts the region's bits.
		for e, err := range ix.layers[0].Extents(off, end-off) {
			if err != nil {
				if ok {
					ix.budget.Add(int64(len(runs)))
				}
				return nil, err
			}
			if e.Kind != disklayer.Absent {
				ix.held.set(e.Off/ix.ss, (e.End()+ix.ss-1)/ix.ss)
			}
		}
	}
	r.runs, r.ok = runs, ok
	r.built.Store(true)
	return r, nil
}

// each calls fn for the pieces of [off, end) that lie in one region each,
// in order, with that region indexed.
func (ix *chainIndex) each(off, end int64, fn func(r *indexRegion, from, to int64) error) error {
	for pos := off; pos < end; {
		i := pos / ix.rb
		to := min((i+1)*ix.rb, end)
		if i >= int64(len(ix.regions)) {
			return fmt.Errorf("index: range [%d, %d) past the disk's %d bytes: %w", off, end, ix.size, disklayer.ErrInvalid)
		}
		r, err := ix.region(i)
		if err != nil {
			return err
		}
		if err := fn(r, pos, to); err != nil {
			return err
		}
		pos = to
	}
	return nil
}

// ensure indexes every region [off, end) touches.
func (ix *chainIndex) ensure(off, end int64) error {
	return ix.each(off, end, func(*indexRegion, int64, int64) error { return nil })
}

// firstRun is the index of the first run of the region that ends after
// off.
func (r *indexRegion) firstRun(off int64) int {
	return sort.Search(len(r.runs), func(i int) bool { return r.runs[i].end > off })
}

// runExtents emits the allocation of [off, off+length), inside the
// region, from its runs.
func (r *indexRegion) runExtents(off, length int64, emit func(disklayer.Extent) error) error {
	end := off + length
	pos := off
	for i := r.firstRun(off); i < len(r.runs) && r.runs[i].off < end; i++ {
		run := r.runs[i]
		from, to := max(run.off, off), min(run.end, end)
		if from > pos {
			if err := emit(disklayer.Extent{Off: pos, Len: from - pos, Kind: disklayer.Absent}); err != nil {
				return err
			}
		}
		if err := emit(disklayer.Extent{Off: from, Len: to - from, Kind: run.kind}); err != nil {
			return err
		}
		pos = to
	}
	if pos < end {
		return emit(disklayer.Extent{Off: pos, Len: end - pos, Kind: disklayer.Absent})
	}
	return nil
}

// resolveRuns computes which layer supplies each byte of [off, end) of
// the view of layers[from:]: the non-absent runs, sorted, each tagged
// with the depth of the layer that supplies it. It reads each layer's
// extents in the range once and overlays them from the base up. ok is
// false when the result would exceed limit runs.
func resolveRuns(layers []disklayer.Layer, from int, off, end, limit int64) (runs []run, ok bool, err error) {
	for depth := len(layers) - 1; depth >= from; depth-- {
		l := layers[depth]
		var own []run
		if lend := min(end, l.Size()); off < lend {
			for e, err := range l.Extents(off, lend-off) {
				if err != nil {
					return nil, false, err
				}
				if e.Kind == disklayer.Absent {
					continue
				}
				own = append(own, run{off: e.Off, end: e.End(), depth: int32(depth), kind: e.Kind})
				if int64(len(own)) > limit {
					return nil, false, nil
				}
			}
		}
		runs = overlay(own, runs, l.Size())
		if int64(len(runs)) > limit {
			return nil, false, nil
		}
	}
	return runs, true, nil
}

// overlay puts upper over lower: the result holds upper's runs and the
// parts of lower's runs that upper does not cover, clipped to size,
// sorted, with touching runs of the same layer and kind merged. Both
// inputs are sorted and free of overlaps; lower is consumed.
func overlay(upper, lower []run, size int64) []run {
	out := make([]run, 0, len(upper)+len(lower))
	add := func(r run) {
		if r.end > size {
			r.end = size
		}
		if r.off >= r.end {
			return
		}
		if n := len(out); n > 0 && out[n-1].end == r.off && out[n-1].depth == r.depth && out[n-1].kind == r.kind {
			out[n-1].end = r.end
			return
		}
		out = append(out, r)
	}
	j := 0
	for _, u := range upper {
		for j < len(lower) && lower[j].off < u.off {
			l := lower[j]
			if l.end <= u.off {
				add(l)
				j++
				continue
			}
			add(run{off: l.off, end: u.off, depth: l.depth, kind: l.kind})
			lower[j].off = u.off
		}
		add(u)
		for j < len(lower) && lower[j].end <= u.end {
			j++
		}
		if j < len(lower) && lower[j].off < u.end {
			lower[j].off = u.end
		}
	}
	for _, l := range lower[j:] {
		add(l)
	}
	return slices.Clip(out)
}

// sectorBitmap is a fixed-size set of sector numbers, safe for concurrent
// use. Bits are only ever set.
type sectorBitmap struct {
	words []atomic.Uint64
}

func newSectorBitmap(sectors int64) *sectorBitmap {
	return &sectorBitmap{words: make([]atomic.Uint64, (sectors+63)/64)}
}

func (b *sectorBitmap) get(sector int64) bool {
	return b.words[sector/64].Load()&(1<<(sector%64)) != 0
}

// set adds the sectors [first, end).
func (b *sectorBitmap) set(first, end int64) {
	for s := first; s < end; {
		w := s / 64
		lo := s % 64
		hi := min(end-w*64, 64)
		var mask uint64
		if hi-lo == 64 {
			mask = ^uint64(0)
		} else {
			mask = (uint64(1)<<(hi-lo) - 1) << lo
		}
		b.words[w].Or(mask)
		s = w*64 + hi
	}
}
