package diffdisk

import (
	"bytes"
	"iter"
	"slices"

	"github.com/hibdisk/hibdisk/disklayer"
)

// Changes yields, in order, the unit-aligned ranges where a and b read
// differently (`hibdisk compare`, `hibdisk diff`). unit is the comparison
// grain in bytes (a power of two; the larger sector size is the natural
// one). Touching units are merged up to about a read chunk (1 MiB), so a
// caller that stops early (Compare wants the first) never waits for a
// whole disk of differences; ChangedRanges merges them all.
//
// With candidates nil, every range where either side has Data is read
// (Absent and Zero extents on both sides read as the same zeros, or the
// same lower layer, and are skipped unread). Non-nil candidates (sorted,
// not overlapping) say that nothing outside them can differ, as when one
// chain is the other with layers on top: only they are read.
//
// Past the smaller image's end, the larger image's non-zero units count
// as changed: qemu-img compare's rule for images of different sizes.
func Changes(a, b disklayer.Layer, unit int64, candidates []disklayer.Range) iter.Seq2[disklayer.Range, error] {
	return changes(a, b, unit, candidates, nil)
}

// changes is Changes telling progress, when not nil, how far it got (in
// bytes of the larger image, without candidates).
func changes(a, b disklayer.Layer, unit int64, candidates []disklayer.Range, progress func(done, total int64)) iter.Seq2[disklayer.Range, error] {
	return func(yield func(disklayer.Range, error) bool) {
		common := min(a.Size(), b.Size())
		total := max(a.Size(), b.Size())
		tell := func(done int64) {
			if progress != nil {
				progress(done, total)
			}
		}
		bufA, bufB := make([]byte, copyChunk), make([]byte, copyChunk)
		var pending disklayer.Range // merged within a chunk
		emit := func(r disklayer.Range) bool {
			if pending.Len > 0 && pending.End() == r.Off && pending.Len < copyChunk {
				pending.Len += r.Len
				return true
			}
			if pending.Len > 0 && !yield(pending, nil) {
				return false
			}
			pending = r
			return true
		}
		flush := func() bool {
			if pending.Len == 0 {
				return true
			}
			r := pending
			pending = disklayer.Range{}
			return yield(r, nil)
		}
		compareRange := func(c disklayer.Range) bool {
			// Widen to whole units so the report is unit-aligned.
			from := c.Off - c.Off%unit
			to := min(common, (c.End()+unit-1)/unit*unit)
			for off := from; off < to; off += copyChunk {
				n := min(copyChunk, to-off)
				pa, pb := bufA[:n], bufB[:n]
				if _, err := a.ReadAt(pa, off); err != nil {
					yield(disklayer.Range{}, err)
					return false
				}
				if _, err := b.ReadAt(pb, off); err != nil {
					yield(disklayer.Range{}, err)
					return false
				}
				if bytes.Equal(pa, pb) {
					continue
				}
				for u := int64(0); u < n; u += unit {
					e := min(u+unit, n)
					if !bytes.Equal(pa[u:e], pb[u:e]) && !emit(disklayer.Range{Off: off + u, Len: e - u}) {
						return false
					}
				}
			}
			return true
		}
		if candidates != nil {
			for _, c := range candidates {
				if c.Off >= common {
					break
				}
				if !compareRange(c) {
					return
				}
			}
		} else {
			for win, w := int64(0), int64(compareWindow); win < common; {
				tell(win)
				n := min(w, common-win)
				runs, err := dataRuns(win, n, a, b)
				if err != nil {
					yield(disklayer.Range{}, err)
					return
				}
				for _, r := range runs {
					if !compareRange(disklayer.Range{Off: r.Off, Len: r.Len}) {
						return
					}
				}
				win, w = win+n, nextWindow(w, len(runs))
			}
		}
		// The larger image's tail must read as zeros.
		larger := a
		if b.Size() > a.Size() {
			larger = b
		}
		for win, w := common, int64(compareWindow); win < larger.Size(); {
			tell(win)
			n := min(w, larger.Size()-win)
			runs, err := dataRuns(win, n, larger)
			if err != nil {
				yield(disklayer.Range{}, err)
				return
			}
			win, w = win+n, nextWindow(w, len(runs))
			for _, r := range runs {
				for off := r.Off; off < r.End(); off += copyChunk {
					p := bufA[:min(copyChunk, r.End()-off)]
					if _, err := larger.ReadAt(p, off); err != nil {
						yield(disklayer.Range{}, err)
						return
					}
					for u := int64(0); u < int64(len(p)); u += unit {
						q := p[u:min(u+unit, int64(len(p)))]
						if firstNonZero(q) >= 0 && !emit(disklayer.Range{Off: off + u, Len: int64(len(q))}) {
							return
						}
					}
				}
			}
		}
		if flush() {
			tell(total)
		}
	}
}

// ChangedRanges is Changes collected: sorted, touching ranges merged.
func ChangedRanges(a, b disklayer.Layer, unit int64, candidates []disklayer.Range) ([]disklayer.Range, error) {
	out := []disklayer.Range{}
	for r, err := range Changes(a, b, unit, candidates) {
		if err != nil {
			return nil, err
		}
		if n := len(out); n > 0 && out[n-1].End() >= r.Off {
			out[n-1].Len = max(out[n-1].End(), r.End()) - out[n-1].Off
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// MergeRanges sorts ranges and joins those that touch or overlap,
// dropping empty ones.
func MergeRanges(rs []disklayer.Range) []disklayer.Range {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(x, y disklayer.Range) int {
		switch {
		case x.Off < y.Off:
			return -1
		case x.Off > y.Off:
			return 1
		}
		return 0
	})
	var out []disklayer.Range
	for _, r := range rs {
		if r.Len <= 0 {
			continue
		}
		if n := len(out); n > 0 && r.Off <= out[n-1].End() {
			out[n-1].Len = max(out[n-1].End(), r.End()) - out[n-1].Off
			continue
		}
		out = append(out, r)
	}
	return out
}
