package diffdisk

import (
	"fmt"
	"math"

	"github.com/hibdisk/hibdisk/disklayer"
)

// MapExtent is one run of a chain's allocation map.
type MapExtent struct {
	Start  int64
	Length int64
	// Kind is Data or Zero (a tombstone) for a run a layer supplies, and
	// Absent for a run no layer stores (it reads as zeros).
	Kind disklayer.ExtentKind
	// Depth is the layer that supplies the run, 0 being the top; -1 for
	// an Absent run.
	Depth int
	// Path is that layer's file ("" for an Absent run or a layer that was
	// not opened from a file).
	Path string
}

// Map returns the allocation map of the whole chain: for every byte,
// which layer supplies it and whether it is data or a tombstone. Runs
// from one layer of one kind are merged; the list covers [0, Size()) in
// order without gaps. It reads each layer's extents once.
func Map(d *Disk) ([]MapExtent, error) {
	if d.closed.Load() {
		return nil, fmt.Errorf("map %s: %w", d.name, disklayer.ErrClosed)
	}
	runs, _, err := resolveRuns(d.layers, 0, 0, d.size, math.MaxInt64)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", d.name, err)
	}
	var out []MapExtent
	pos := int64(0)
	absent := func(to int64) {
		if to > pos {
			out = append(out, MapExtent{Start: pos, Length: to - pos, Kind: disklayer.Absent, Depth: -1})
		}
	}
	for _, r := range runs {
		absent(r.off)
		out = append(out, MapExtent{Start: r.off, Length: r.end - r.off, Kind: r.kind, Depth: int(r.depth), Path: d.meta[r.depth].path})
		pos = r.end
	}
	absent(d.size)
	return out, nil
}
