package diffdisk

import (
	"slices"
	"sort"
	"sync/atomic"

	"github.com/hibdisk/hibdisk/disklayer"
)

// Index limits. Past them the Disk reads layer by layer instead: slower
// for deep chains, but bounded in memory.
var (
	// maxIndexRuns bounds the runs kept for the immutable layers
	// (24 bytes each).
	maxIndexRuns = 1 << 20
	// maxHeldSectors bounds the top-sector bitmap (one bit per sector:
	// 16 MiB at the limit, a 512 GiB disk of 4 KiB sectors).
	maxHeldSectors int64 = 1 << 27
)

// chainIndex lets a read go straight to the layer that supplies it.
//
// The layers from depth `from` down cannot change while the Disk is open,
// so their combined allocation is computed once as sorted runs. The top
// of a writable Disk changes only through the Disk, which sets a bit in
// held for every sector it writes, zeroes or fills.
type chainIndex struct {
	from    int   // depth of the first immutable layer: 1, or 0 when read-only
	lower   []run // non-absent runs of the view of layers[from:], sorted
	lowerOK bool  // lower is complete (false: too many runs, walk instead)
	held    *sectorBitmap
}

// run is a range that one layer supplies: its data, or a tombstone.
type run struct {
	off, end int64
	depth    int32
	kind     disklayer.ExtentKind
}

// chainIndex returns the Disk's index, building it on first use, or nil
// when the Disk has a single layer (nothing to index) or indexing is off.
func (d *Disk) chainIndex() (*chainIndex, error) {
	if len(d.layers) == 1 || d.noIndex {
		return nil, nil
	}
	d.indexOnce.Do(func() {
		d.index, d.indexErr = d.buildIndex()
	})
	return d.index, d.indexErr
}

func (d *Disk) buildIndex() (*chainIndex, error) {
	ix := &chainIndex{from: 1}
	if d.top == nil {
		ix.from = 0
	}
	runs, ok, err := resolveRuns(d.layers, ix.from, maxIndexRuns)
	if err != nil {
		return nil, err
	}
	ix.lower, ix.lowerOK = runs, ok
	if ix.from == 1 {
		if sectors := d.size / d.sectorSize; sectors <= maxHeldSectors {
			ix.held = newSectorBitmap(sectors)
			// Walk the top's extents now: the bitmap must cover every row
			// the top holds before any read trusts it. chainIndex runs
			// before every write, so no write lands during the walk.
			for e, err := range d.layers[0].Extents(0, d.size) {
				if err != nil {
					return nil, err
				}
				if e.Kind != disklayer.Absent {
					ix.held.set(e.Off/d.sectorSize, (e.End()+d.sectorSize-1)/d.sectorSize)
				}
			}
		}
	}
	return ix, nil
}

// firstRun is the index of the first run that ends after off.
func (ix *chainIndex) firstRun(off int64) int {
	return sort.Search(len(ix.lower), func(i int) bool { return ix.lower[i].end > off })
}

// runExtents emits the allocation of [off, off+length) from the runs.
func (ix *chainIndex) runExtents(off, length int64, emit func(disklayer.Extent) error) error {
	end := off + length
	pos := off
	for i := ix.firstRun(off); i < len(ix.lower) && ix.lower[i].off < end; i++ {
		r := ix.lower[i]
		from, to := max(r.off, off), min(r.end, end)
		if from > pos {
			if err := emit(disklayer.Extent{Off: pos, Len: from - pos, Kind: disklayer.Absent}); err != nil {
				return err
			}
		}
		if err := emit(disklayer.Extent{Off: from, Len: to - from, Kind: r.kind}); err != nil {
			return err
		}
		pos = to
	}
	if pos < end {
		return emit(disklayer.Extent{Off: pos, Len: end - pos, Kind: disklayer.Absent})
	}
	return nil
}

// resolveRuns computes which layer supplies each byte of the view of
// layers[from:]: the non-absent runs, sorted, each tagged with the depth
// of the layer that supplies it. It reads each layer's extents once and
// overlays them from the base up. ok is false when the result would
// exceed limit runs (limit <= 0: no limit).
func resolveRuns(layers []disklayer.Layer, from int, limit int) (runs []run, ok bool, err error) {
	for depth := len(layers) - 1; depth >= from; depth-- {
		l := layers[depth]
		var own []run
		for e, err := range l.Extents(0, l.Size()) {
			if err != nil {
				return nil, false, err
			}
			if e.Kind == disklayer.Absent {
				continue
			}
			own = append(own, run{off: e.Off, end: e.End(), depth: int32(depth), kind: e.Kind})
			if limit > 0 && len(own) > limit {
				return nil, false, nil
			}
		}
		runs = overlay(own, runs, l.Size())
		if limit > 0 && len(runs) > limit {
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
