package layertest

import (
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
)

// pattern returns n bytes of non-zero content that differs with seed and
// with the position, so misplaced bytes show.
func pattern(n int64, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7+int(seed)*31)%251 + 1
	}
	return p
}

// testGeometry checks that a new disk has the size and sector size asked
// for and holds nothing, and that the last sector works, also on a disk
// larger than 4 GiB.
func (f Factory) testGeometry(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		for _, size := range []int64{ss, 7 * ss, 5<<30 + ss} {
			h := newHarness(t, f, c, size)
			list, err := collectExtents(h.d, 0, size)
			if err != nil {
				t.Fatalf("size %d: Extents of a new disk: %v", size, err)
			}
			if err := checkExtentShape(list, 0, size, c.sectorSize); err != nil {
				t.Fatalf("size %d: Extents of a new disk: %v", size, err)
			}
			if want := []disklayer.Extent{{Off: 0, Len: size, Kind: disklayer.Absent}}; f.ExtentsExact && !slices.Equal(list, want) {
				t.Fatalf("size %d: Extents of a new disk = %v, want %v", size, list, want)
			}
			// The last sector, past 4 GiB on the large disk, works.
			h.apply(op{kind: opWrite, off: size - ss, data: pattern(ss, 1)})
			h.apply(op{kind: opRead, off: max(0, size-ss-1), length: min(ss+1, size)})
			h.apply(op{kind: opExtents, off: max(0, size-2*ss), length: min(2*ss, size)})
			if size < 1<<20 {
				h.verifyAll()
				continue
			}
			list, err = collectExtents(h.d, 0, size)
			if err != nil {
				t.Fatalf("size %d: Extents: %v", size, err)
			}
			if err := checkExtentShape(list, 0, size, c.sectorSize); err != nil {
				t.Fatalf("size %d: Extents: %v", size, err)
			}
			if last := list[len(list)-1]; last.Kind != disklayer.Data || last.Off > size-ss {
				t.Fatalf("size %d: after writing the last sector, Extents end with %v", size, last)
			}
			want := []disklayer.Extent{{Off: 0, Len: size - ss, Kind: disklayer.Absent}, {Off: size - ss, Len: ss, Kind: disklayer.Data}}
			if f.ExtentsExact && !slices.Equal(list, want) {
				t.Fatalf("size %d: Extents = %v, want %v", size, list, want)
			}
		}
	})
}

// testBoundaries checks the last sector, out-of-range requests and
// zero-length requests.
func (f Factory) testBoundaries(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		size := 8 * ss
		h := newHarness(t, f, c, size)
		h.apply(op{kind: opWrite, off: 0, data: pattern(size, 2)})

		// The last sector and the last byte.
		h.apply(op{kind: opWrite, off: size - ss, data: pattern(ss, 3)})
		h.apply(op{kind: opWrite, off: size - 1, data: []byte{0xEE}})
		h.apply(op{kind: opZero, off: size - ss/2, length: ss/2 - 1})
		h.apply(op{kind: opRead, off: size - ss, length: ss})
		h.apply(op{kind: opZero, off: size - ss, length: ss})
		h.apply(op{kind: opExtents, off: size - ss, length: ss})
		h.apply(op{kind: opWrite, off: size - ss, data: pattern(ss, 4)})

		bad := [][2]int64{
			{-1, 1}, {-ss, ss}, {-1, 0}, {math.MinInt64, 1},
			{size, 1}, {size + 1, 0}, {size - 1, 2}, {0, size + 1}, {size - ss, ss + 1},
			{math.MaxInt64, 1}, {math.MaxInt64 - 1, 2}, {1, math.MaxInt64}, {math.MaxInt64, math.MaxInt64},
			{0, -1}, {size, -1}, {ss, math.MinInt64},
		}
		cacher, _ := h.d.(disklayer.ReadCacher)
		reader, _ := h.d.(disklayer.OwnReader)
		for _, r := range bad {
			off, length := r[0], r[1]
			outOfRange := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, disklayer.ErrOutOfRange) {
					t.Errorf("%s(off=%d, len=%d) = %v, want an error wrapping %v", what, off, length, err, disklayer.ErrOutOfRange)
				}
			}
			outOfRange("Zero", h.d.Zero(off, length))
			list, err := collectExtents(h.d, off, length)
			outOfRange("Extents", err)
			if len(list) > 0 {
				t.Errorf("Extents(%d, %d) yielded %v before its error", off, length, list)
			}
			if length < 0 || length > size+1 {
				continue // no buffer of that length
			}
			_, err = h.d.ReadAt(make([]byte, length), off)
			outOfRange("ReadAt", err)
			_, err = h.d.WriteAt(pattern(length, 5), off)
			outOfRange("WriteAt", err)
			if reader != nil {
				outOfRange("ReadOwn", reader.ReadOwn(make([]byte, length), off, func(int64, int64) error { return nil }))
			}
			if cacher != nil && length%ss == 0 && off%ss == 0 {
				outOfRange("FillAbsent", cacher.FillAbsent(pattern(length, 6), off))
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		// Rejected requests changed nothing.
		h.verifyAll()

		// Zero-length requests succeed at 0, inside, and at Size.
		for _, off := range []int64{0, ss / 2, size - 1, size} {
			for _, p := range [][]byte{nil, {}} {
				if n, err := h.d.ReadAt(p, off); n != 0 || err != nil {
					t.Errorf("ReadAt(%d bytes, %d) = %d, %v; want 0, nil", len(p), off, n, err)
				}
				if n, err := h.d.WriteAt(p, off); n != 0 || err != nil {
					t.Errorf("WriteAt(%d bytes, %d) = %d, %v; want 0, nil", len(p), off, n, err)
				}
			}
			if err := h.d.Zero(off, 0); err != nil {
				t.Errorf("Zero(%d, 0) = %v", off, err)
			}
			if list, err := collectExtents(h.d, off, 0); len(list) != 0 || err != nil {
				t.Errorf("Extents(%d, 0) = %v, %v; want nothing", off, list, err)
			}
			if reader != nil {
				called := false
				err := reader.ReadOwn(nil, off, func(int64, int64) error { called = true; return nil })
				if err != nil || called {
					t.Errorf("ReadOwn(nil, %d) = %v, called absent: %v; want nil, false", off, err, called)
				}
			}
		}
		h.verifyAll()
	})
}

// kindsToExtents builds the merged extents of whole sectors of the given
// kinds.
func kindsToExtents(kinds []disklayer.ExtentKind, sectorSize int64) []disklayer.Extent {
	var list []disklayer.Extent
	for i, k := range kinds {
		if n := len(list); n > 0 && list[n-1].Kind == k {
			list[n-1].Len += sectorSize
			continue
		}
		list = append(list, disklayer.Extent{Off: int64(i) * sectorSize, Len: sectorSize, Kind: k})
	}
	return list
}

// testRowRule checks, against hand-written expectations rather than the
// model, how writes and Zero map to rows: an all-zero sector is a
// tombstone when the layer has a parent and no row when it has none, and
// partial writes keep the rest of the sector.
func (f Factory) testRowRule(t *testing.T) {
	if !f.ExtentsExact {
		t.Skip("extents are not exact: rows are not observable")
	}
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		h := newHarness(t, f, c, 10*ss)
		zeroKind := disklayer.Absent
		if c.hasParent {
			zeroKind = disklayer.Zero
		}
		zeros := make([]byte, ss)
		// sector 1: data; 2: data then overwritten with zeros;
		// 3: zeros written over nothing; 4: data then Zero;
		// 5: data, half zeroed; 6: data in the first half only, then
		// that half zeroed; 7: Zero over nothing;
		// 8: data written unaligned across 8 and 9.
		h.apply(op{kind: opWrite, off: 1 * ss, data: pattern(ss, 1)})
		h.apply(op{kind: opWrite, off: 2 * ss, data: pattern(ss, 2)})
		h.apply(op{kind: opWrite, off: 2 * ss, data: zeros})
		h.apply(op{kind: opWrite, off: 3 * ss, data: zeros})
		h.apply(op{kind: opWrite, off: 4 * ss, data: pattern(ss, 4)})
		h.apply(op{kind: opZero, off: 4 * ss, length: ss})
		h.apply(op{kind: opWrite, off: 5 * ss, data: pattern(ss, 5)})
		h.apply(op{kind: opZero, off: 5 * ss, length: ss / 2})
		h.apply(op{kind: opWrite, off: 6 * ss, data: pattern(ss/2, 6)})
		h.apply(op{kind: opWrite, off: 6 * ss, data: zeros[:ss/2]})
		h.apply(op{kind: opZero, off: 7 * ss, length: ss})
		h.apply(op{kind: opWrite, off: 8*ss + ss/2, data: pattern(ss, 8)})
		want := []disklayer.ExtentKind{
			disklayer.Absent, disklayer.Data, zeroKind, zeroKind, zeroKind,
			disklayer.Data, zeroKind, zeroKind, disklayer.Data, disklayer.Data,
		}
		got, err := collectExtents(h.d, 0, 10*ss)
		if err != nil {
			t.Fatalf("Extents: %v", err)
		}
		if wantList := kindsToExtents(want, ss); !slices.Equal(got, wantList) {
			h.fail("Extents = %v, want %v", got, wantList)
		}
		h.verifyAll()
	})
}

// scenario fills a disk of 16 sectors with a mix of data, tombstones,
// zero writes and holes, aligned and not.
func scenario(h *harness) {
	ss := int64(h.c.sectorSize)
	h.apply(op{kind: opWrite, off: 1 * ss, data: pattern(2*ss, 1)})
	h.apply(op{kind: opWrite, off: 4*ss + 3, data: pattern(ss, 2)})
	h.apply(op{kind: opWrite, off: 7 * ss, data: pattern(4*ss, 3)})
	h.apply(op{kind: opZero, off: 8 * ss, length: ss})
	h.apply(op{kind: opZero, off: 9*ss + 5, length: ss})
	h.apply(op{kind: opWrite, off: 12 * ss, data: make([]byte, ss)})
	h.apply(op{kind: opZero, off: 13 * ss, length: 2 * ss})
	h.apply(op{kind: opWrite, off: 16*ss - 1, data: []byte{9}})
}

// probePoints are offsets around every sector boundary of a disk.
func probePoints(size, sectorSize int64) []int64 {
	var points []int64
	for at := int64(0); at <= size; at += sectorSize {
		for _, p := range []int64{at - 1, at, at + 1} {
			if p >= 0 && p <= size {
				points = append(points, p)
			}
		}
	}
	return points
}

// testExtents checks extents of many ranges around sector boundaries:
// well formed, clipped, merged, the model's kinds when exact, and in
// agreement with ReadAt.
func (f Factory) testExtents(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		size := 16 * ss
		h := newHarness(t, f, c, size)
		scenario(h)
		points := probePoints(size, ss)
		for i, from := range points {
			for _, to := range points[i:] {
				if (to-from)%3 != 0 && to-from > 2*ss {
					continue // sample the long ranges
				}
				h.apply(op{kind: opExtents, off: from, length: to - from})
			}
		}
		// Stopping early is allowed: the iterator must not call yield
		// again (range-over-func would panic).
		for range h.d.Extents(0, size) {
			break
		}
		h.verifyAll()
	})
}

// testReopen checks that data, tombstones, zeros and geometry survive
// Close and open, with and without an explicit Flush.
func (f Factory) testReopen(t *testing.T) {
	if f.Reopen == nil {
		t.Skip("the implementation has no persistence (Factory.Reopen is nil)")
	}
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		h := newHarness(t, f, c, 16*ss)
		scenario(h)
		h.apply(op{kind: opFlush})
		h.apply(op{kind: opReopen})
		h.verifyAll()

		// Without Flush: Close must flush.
		h.apply(op{kind: opWrite, off: 2*ss + 1, data: pattern(3*ss, 7)})
		h.apply(op{kind: opZero, off: 7 * ss, length: 2 * ss})
		h.apply(op{kind: opWrite, off: 15 * ss, data: make([]byte, ss)})
		h.apply(op{kind: opReopen})
		h.verifyAll()

		// Reopening an unchanged disk changes nothing.
		h.apply(op{kind: opReopen})
		h.verifyAll()
	})
}

// testOwnReader checks ReadOwn against ReadAt and Extents over ranges
// around sector boundaries, and that an error from absent stops it.
func (f Factory) testOwnReader(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		size := 16 * ss
		h := newHarness(t, f, c, size)
		reader, ok := h.d.(disklayer.OwnReader)
		if !ok {
			t.Skip("not an OwnReader")
		}
		scenario(h)
		points := probePoints(size, ss)
		for i, from := range points {
			for _, to := range points[i:] {
				if (to-from)%5 != 0 && to-from > 2*ss {
					continue
				}
				h.apply(op{kind: opReadOwn, off: from, length: to - from})
			}
		}
		// Sector 0 is Absent: the callback's error comes back.
		stop := errors.New("stop from absent callback")
		calls := 0
		err := reader.ReadOwn(make([]byte, size), 0, func(int64, int64) error { calls++; return stop })
		if !errors.Is(err, stop) || calls != 1 {
			t.Errorf("ReadOwn with a failing absent callback = %v after %d calls, want %v after 1", err, calls, stop)
		}
	})
}

// testReadCacher checks that FillAbsent fills only sectors without a row,
// never overwriting data or tombstones, and rejects unaligned ranges.
func (f Factory) testReadCacher(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		size := 16 * ss
		h := newHarness(t, f, c, size)
		cacher, ok := h.d.(disklayer.ReadCacher)
		if !ok {
			t.Skip("not a ReadCacher")
		}
		scenario(h)
		before := make([]byte, size)
		if _, err := h.d.ReadAt(before, 0); err != nil {
			t.Fatalf("ReadAt: %v", err)
		}
		held, err := collectExtents(h.d, 0, size)
		if err != nil {
			t.Fatalf("Extents: %v", err)
		}

		fill := pattern(size, 77)
		clear(fill[5*ss : 6*ss]) // an all-zero sector from below
		h.apply(op{kind: opFillAbsent, off: 0, length: size, data: fill})

		after := make([]byte, size)
		if _, err := h.d.ReadAt(after, 0); err != nil {
			t.Fatalf("ReadAt: %v", err)
		}
		for _, e := range held {
			want := fill
			if e.Kind != disklayer.Absent {
				want = before
			}
			if diff := firstDiff(after[e.Off:e.End()], want[e.Off:e.End()], e.Off); diff != "" {
				h.fail("after FillAbsent, %v extent: %s", e.Kind, diff)
			}
		}
		h.verifyAll()

		// A second fill finds nothing absent where the first one wrote.
		h.apply(op{kind: opFillAbsent, off: 2 * ss, length: 4 * ss, data: pattern(4*ss, 78)})
		h.verifyAll()

		for _, r := range [][2]int64{{1, ss}, {0, ss - 1}, {ss / 2, ss / 2}, {ss, ss + 1}} {
			err := cacher.FillAbsent(pattern(r[1], 79), r[0])
			if !errors.Is(err, disklayer.ErrInvalid) {
				t.Errorf("FillAbsent(off=%d, len=%d) = %v, want an error wrapping %v", r[0], r[1], err, disklayer.ErrInvalid)
			}
		}
		h.verifyAll()
	})
}

// testClosed checks that every operation on a closed disk fails with
// ErrClosed instead of panicking.
func (f Factory) testClosed(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		ss := int64(c.sectorSize)
		d := f.New(t, 4*ss, c.sectorSize, c.hasParent)
		if _, err := d.WriteAt(pattern(ss, 1), 0); err != nil {
			t.Fatalf("WriteAt: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		closed := func(what string, err error) {
			t.Helper()
			if !errors.Is(err, disklayer.ErrClosed) {
				t.Errorf("%s after Close = %v, want an error wrapping %v", what, err, disklayer.ErrClosed)
			}
		}
		_, err := d.ReadAt(make([]byte, ss), 0)
		closed("ReadAt", err)
		_, err = d.WriteAt(pattern(ss, 2), 0)
		closed("WriteAt", err)
		closed("Zero", d.Zero(0, ss))
		closed("Flush", d.Flush())
		_, err = collectExtents(d, 0, ss)
		closed("Extents", err)
		if reader, ok := d.(disklayer.OwnReader); ok {
			closed("ReadOwn", reader.ReadOwn(make([]byte, ss), 0, func(int64, int64) error { return nil }))
		}
		if cacher, ok := d.(disklayer.ReadCacher); ok {
			closed("FillAbsent", cacher.FillAbsent(pattern(ss, 3), ss))
		}
		closed("second Close", d.Close())
		// The accessors have no error to return; they must not panic.
		_, _ = d.Size(), d.SectorSize()
	})
}
