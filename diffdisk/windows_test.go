package diffdisk

import (
	"iter"
	"slices"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
)

// countingLayer counts the Extents calls made of it.
type countingLayer struct {
	*memlayer.Layer
	calls int
}

func (c *countingLayer) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	c.calls++
	return c.Layer.Extents(off, length)
}

// TestChangesOverSparseAddressSpace: over a 64 TiB address space (every
// layer's hibernate file) with data at both ends and in the middle,
// Changes finds every changed sector, past the smaller side's end too,
// and asks each side for its allocation a few hundred times, not once
// per 64 MiB (a million times).
func TestChangesOverSparseAddressSpace(t *testing.T) {
	const ss, tib = 4096, int64(1) << 40
	newLayer := func(size int64, data ...int64) *countingLayer {
		l, err := memlayer.New(size, ss, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, off := range data {
			if _, err := l.WriteAt([]byte{1, 2, 3}, off); err != nil {
				t.Fatal(err)
			}
		}
		return &countingLayer{Layer: l}
	}
	mid := 40*tib + 12345*ss
	a := newLayer(64*tib, 1<<20, mid)
	b := newLayer(64*tib+tib, 1<<20, 63*tib, 64*tib+5*ss)
	got, err := ChangedRanges(a, b, ss, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []disklayer.Range{{Off: mid, Len: ss}, {Off: 63 * tib, Len: ss}, {Off: 64*tib + 5*ss, Len: ss}}
	if !slices.Equal(got, want) {
		t.Errorf("changed ranges %v, want %v", got, want)
	}
	if a.calls > 300 || b.calls > 300 {
		t.Errorf("Extents asked %d and %d times, want a few hundred at most", a.calls, b.calls)
	}
	t.Logf("Extents calls: %d, %d", a.calls, b.calls)
}

// TestHugeDiskIsWalked: a stack over more than maxIndexRegions regions
// (the 64 TiB hibernate file) maps without the chain index, one Extents
// call per layer, not one per 64 MiB region.
func TestHugeDiskIsWalked(t *testing.T) {
	const ss, size = 4096, int64(64) << 40
	top, err := memlayer.New(size, ss, true)
	if err != nil {
		t.Fatal(err)
	}
	base, err := memlayer.New(size, ss, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := base.WriteAt([]byte{7}, size/2); err != nil {
		t.Fatal(err)
	}
	cb := &countingLayer{Layer: base}
	d, err := Compose(Options{ReadOnly: true}, top, cb)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var data []disklayer.Extent
	for e, err := range d.Extents(0, size) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disklayer.Data {
			data = append(data, e)
		}
	}
	if want := []disklayer.Extent{{Off: size / 2, Len: ss, Kind: disklayer.Data}}; !slices.Equal(data, want) {
		t.Errorf("data extents %v, want %v", data, want)
	}
	if cb.calls > 4 {
		t.Errorf("the base was asked for its extents %d times, want one walk", cb.calls)
	}
}
