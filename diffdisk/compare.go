package diffdisk

import (
	"bytes"
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
)

// CompareResult is the outcome of Compare.
type CompareResult struct {
	// Equal: the images read the same, with qemu-img compare's rule for
	// different sizes: the part past the smaller image's end must read as
	// zeros in the larger one.
	Equal bool
	// FirstDiff is the offset of the first byte that differs (past the
	// smaller image's end: the first non-zero byte there); -1 when Equal.
	FirstDiff int64
	// SizeA and SizeB are the sizes compared; SizeDiffers says they
	// differ (which alone does not make the images unequal).
	SizeA, SizeB int64
	SizeDiffers  bool
}

// compareWindow is how much of each image's allocation Compare asks for
// at a time, while it finds data; maxCompareWindow is what the window
// grows to, doubling, over stretches without any (nextWindow).
const (
	compareWindow    = 64 << 20
	maxCompareWindow = 1 << 40
)

// nextWindow is the window after one of w bytes that held runs data
// runs. A hibernate file is a 64 TiB address space, almost all of it
// empty: at a fixed 64 MiB its million windows, each asking every layer
// of both sides, took 5.8 s to diff two empty layers.
func nextWindow(w int64, runs int) int64 {
	if runs > 0 {
		return compareWindow
	}
	return min(2*w, maxCompareWindow)
}

// Compare compares the content of two images (`hibdisk compare`), each a
// chain or a raw image or any layer, like qemu-img compare in its default
// (non-strict) mode. Ranges where neither side has data (Absent or Zero
// extents on both) are skipped without reading them.
func Compare(a, b disklayer.Layer) (CompareResult, error) {
	return CompareWith(a, b, nil)
}

// CompareWith is Compare telling progress, when not nil, how many bytes
// of the larger image it has gone through, and their total.
func CompareWith(a, b disklayer.Layer, progress func(done, total int64)) (CompareResult, error) {
	sa, sb := a.Size(), b.Size()
	res := CompareResult{SizeA: sa, SizeB: sb, SizeDiffers: sa != sb, FirstDiff: -1}
	unit := int64(max(a.SectorSize(), b.SectorSize()))
	for r, err := range changes(a, b, unit, nil, progress) {
		if err != nil {
			return res, fmt.Errorf("compare: %w", err)
		}
		// The first changed unit: find its first differing byte.
		pa, pb := make([]byte, r.Len), make([]byte, r.Len)
		if r.Off >= min(sa, sb) {
			larger := a
			if sb > sa {
				larger = b
			}
			if _, err := larger.ReadAt(pa, r.Off); err != nil {
				return res, fmt.Errorf("compare: %w", err)
			}
			res.FirstDiff = r.Off + int64(firstNonZero(pa))
			return res, nil
		}
		if _, err := a.ReadAt(pa, r.Off); err != nil {
			return res, fmt.Errorf("compare: %w", err)
		}
		if _, err := b.ReadAt(pb, r.Off); err != nil {
			return res, fmt.Errorf("compare: %w", err)
		}
		res.FirstDiff = r.Off + int64(firstMismatch(pa, pb))
		return res, nil
	}
	res.Equal = true
	return res, nil
}

// dataRuns returns the union of the Data extents of the layers within
// [off, off+length), sorted and merged.
func dataRuns(off, length int64, layers ...disklayer.Layer) ([]disklayer.Extent, error) {
	var runs []disklayer.Extent
	for _, l := range layers {
		var own []disklayer.Extent
		for e, err := range l.Extents(off, length) {
			if err != nil {
				return nil, err
			}
			if e.Kind == disklayer.Data {
				own = append(own, e)
			}
		}
		runs = unionRuns(runs, own)
	}
	return runs, nil
}

// unionRuns merges two sorted lists of non-overlapping extents into one
// sorted list whose touching or overlapping extents are joined.
func unionRuns(x, y []disklayer.Extent) []disklayer.Extent {
	out := make([]disklayer.Extent, 0, len(x)+len(y))
	add := func(e disklayer.Extent) {
		if n := len(out); n > 0 && out[n-1].End() >= e.Off {
			out[n-1].Len = max(out[n-1].End(), e.End()) - out[n-1].Off
			return
		}
		out = append(out, e)
	}
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		if j == len(y) || (i < len(x) && x[i].Off <= y[j].Off) {
			add(x[i])
			i++
		} else {
			add(y[j])
			j++
		}
	}
	return out
}

// firstMismatch returns the index of the first byte where a and b (of one
// length) differ, or -1.
func firstMismatch(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	// Narrow down in blocks first: bytes.Equal is much faster than a
	// byte loop.
	const block = 256
	for i := 0; i < len(a); i += block {
		j := min(i+block, len(a))
		if bytes.Equal(a[i:j], b[i:j]) {
			continue
		}
		for k := i; k < j; k++ {
			if a[k] != b[k] {
				return k
			}
		}
	}
	return -1
}

// firstNonZero returns the index of the first non-zero byte, or -1.
func firstNonZero(p []byte) int {
	var zeros [256]byte
	for i := 0; i < len(p); i += len(zeros) {
		j := min(i+len(zeros), len(p))
		if bytes.Equal(p[i:j], zeros[:j-i]) {
			continue
		}
		for k := i; k < j; k++ {
			if p[k] != 0 {
				return k
			}
		}
	}
	return -1
}
