package diffdisk

import (
	"bytes"
	"iter"
	"sync"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
)

// extentsSpy records the ranges the Disk asks a layer's Extents for.
type extentsSpy struct {
	disklayer.Layer
	mu    sync.Mutex
	asked []disklayer.Range
}

func (s *extentsSpy) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	s.mu.Lock()
	s.asked = append(s.asked, disklayer.Range{Off: off, Len: length})
	s.mu.Unlock()
	return s.Layer.Extents(off, length)
}

// TestFirstReadIndexesOnlyItsRegion: the first read through a chain asks
// the layers below only about the region it falls in, not about the
// whole base (issue 17: the first 4 KiB read over a base holding 4 GiB
// took 2.6 s, the chain index being built by scanning every row), and a
// read elsewhere later indexes that region then.
func TestFirstReadIndexesOnlyItsRegion(t *testing.T) {
	const size, ss, region = 1 << 20, 4096, 64 << 10
	ls := memStack(t, size, ss, 2, false)
	base := fill(size, 5)
	if _, err := ls[1].WriteAt(base, 0); err != nil {
		t.Fatal(err)
	}
	spy := &extentsSpy{Layer: ls[1]}
	d, err := Compose(Options{}, ls[0], spy)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.regionBytes = region

	check := func(off int64) {
		t.Helper()
		spy.asked = nil
		if got := mustRead(t, d, off, ss); !bytes.Equal(got, base[off:off+ss]) {
			t.Fatalf("read at %d returns other bytes", off)
		}
		if len(spy.asked) == 0 {
			t.Fatalf("read at %d asked the base nothing: no index was built", off)
		}
		first := off / region * region
		for _, r := range spy.asked {
			if r.Off < first || r.End() > first+region {
				t.Errorf("read at %d asked the base about [%d, %d), outside its region [%d, %d)", off, r.Off, r.End(), first, first+region)
			}
		}
	}
	check(5 * region)
	check(11*region + ss)
	// A region already indexed is not asked about again.
	spy.asked = nil
	mustRead(t, d, 5*region+ss, ss)
	if len(spy.asked) != 0 {
		t.Errorf("a second read in an indexed region asked the base about %v", spy.asked)
	}
}
