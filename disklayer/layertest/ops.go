package layertest

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
	"github.com/hibdisk/hibdisk/internal/testbytes"
)

// opKind is one kind of operation the random and fuzz drivers issue.
type opKind uint8

const (
	opWrite opKind = iota
	opZero
	opRead
	opExtents
	opFlush
	opReopen
	opReadOwn
	opFillAbsent
	numOpKinds
)

func (k opKind) String() string {
	return [...]string{"WriteAt", "Zero", "ReadAt", "Extents", "Flush", "Reopen", "ReadOwn", "FillAbsent"}[k]
}

// op is one operation. For WriteAt and FillAbsent the length is len(data);
// for ReadAt and ReadOwn it is the buffer size.
type op struct {
	kind   opKind
	off    int64
	length int64
	data   []byte
}

func (o op) String() string {
	switch o.kind {
	case opFlush, opReopen:
		return o.kind.String()
	case opWrite, opFillAbsent:
		return fmt.Sprintf("%v(off=%d len=%d %s)", o.kind, o.off, len(o.data), describeData(o.data))
	}
	return fmt.Sprintf("%v(off=%d len=%d)", o.kind, o.off, o.length)
}

func describeData(p []byte) string {
	if slices.ContainsFunc(p, func(b byte) bool { return b != 0 }) {
		return "data"
	}
	return "zeros"
}

// harness drives one disk under test next to a memlayer oracle that gets
// the same operations.
type harness struct {
	t      *testing.T
	f      Factory
	c      config
	d      disklayer.Disk
	oracle *memlayer.Layer
	// log holds the operations so far, printed when a check fails.
	log []op
	// got and want are the read buffers of every check (scratch).
	got, want []byte
}

// scratch returns buffers of n bytes for a check's reads: got filled
// with poison (0xa5), so that bytes a read leaves unset show as a
// difference, and want for the oracle, which sets every byte. They are
// reused from check to check: under the race detector a fresh large
// allocation costs a page fault for every page of its shadow memory,
// which was most of a conformance run.
func (h *harness) scratch(n int64) (got, want []byte) {
	if int64(cap(h.got)) < n {
		h.got, h.want = make([]byte, n), make([]byte, n)
	}
	got, want = h.got[:n], h.want[:n]
	testbytes.Fill(got, 0xa5)
	return got, want
}

func newHarness(t *testing.T, f Factory, c config, size int64) *harness {
	t.Helper()
	oracle, err := memlayer.New(size, c.sectorSize, c.hasParent)
	if err != nil {
		t.Fatalf("memlayer.New(%d, %d, %v): %v", size, c.sectorSize, c.hasParent, err)
	}
	h := &harness{t: t, f: f, c: c, d: f.New(t, size, c.sectorSize, c.hasParent), oracle: oracle}
	t.Cleanup(func() {
		if h.d != nil {
			if err := h.d.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	})
	if got := h.d.Size(); got != size {
		t.Fatalf("new disk has Size %d, want %d", got, size)
	}
	if got := h.d.SectorSize(); got != c.sectorSize {
		t.Fatalf("new disk has SectorSize %d, want %d", got, c.sectorSize)
	}
	return h
}

// fail reports a failed check with the operations that led to it.
func (h *harness) fail(format string, args ...any) {
	h.t.Helper()
	var b []byte
	start := max(0, len(h.log)-20)
	for i, o := range h.log[start:] {
		b = fmt.Appendf(b, "\n  op %d: %v", start+i, o)
	}
	h.t.Fatalf("%s\nafter %d operations, the last ones:%s", fmt.Sprintf(format, args...), len(h.log), b)
}

// sameError checks that the disk failed exactly when the oracle did, with
// the same sentinel.
func (h *harness) sameError(o op, got, want error) (ok bool) {
	h.t.Helper()
	if want == nil {
		if got != nil {
			h.fail("%v: %v, the model succeeds", o, got)
		}
		return true
	}
	if got == nil {
		h.fail("%v succeeded, want an error like the model's: %v", o, want)
	}
	for _, sentinel := range []error{disklayer.ErrOutOfRange, disklayer.ErrInvalid} {
		if errors.Is(want, sentinel) && !errors.Is(got, sentinel) {
			h.fail("%v: error %v does not wrap %v (the model: %v)", o, got, sentinel, want)
		}
	}
	return false
}

// apply performs o on the disk and the oracle and compares the outcomes.
func (h *harness) apply(o op) {
	h.t.Helper()
	h.log = append(h.log, o)
	switch o.kind {
	case opWrite:
		n, err := h.d.WriteAt(o.data, o.off)
		_, want := h.oracle.WriteAt(o.data, o.off)
		if h.sameError(o, err, want) && n != len(o.data) {
			h.fail("%v wrote %d bytes", o, n)
		}
	case opZero:
		h.sameError(o, h.d.Zero(o.off, o.length), h.oracle.Zero(o.off, o.length))
	case opRead:
		got, want := h.scratch(o.length)
		n, err := h.d.ReadAt(got, o.off)
		_, wantErr := h.oracle.ReadAt(want, o.off)
		if h.sameError(o, err, wantErr) {
			if n != len(got) {
				h.fail("%v read %d bytes", o, n)
			}
			if diff := firstDiff(got, want, o.off); diff != "" {
				h.fail("%v: %s", o, diff)
			}
		}
	case opExtents:
		got, err := collectExtents(h.d, o.off, o.length)
		want, wantErr := collectExtents(h.oracle, o.off, o.length)
		if h.sameError(o, err, wantErr) {
			h.checkExtents(o.off, o.length, got, want)
		}
	case opFlush:
		if err := h.d.Flush(); err != nil {
			h.fail("Flush: %v", err)
		}
	case opReopen:
		h.reopen()
	case opReadOwn:
		h.readOwn(o)
	case opFillAbsent:
		cacher, ok := h.d.(disklayer.ReadCacher)
		if !ok {
			h.t.Fatalf("%v on a disk that is not a ReadCacher", o)
		}
		h.sameError(o, cacher.FillAbsent(o.data, o.off), h.oracle.FillAbsent(o.data, o.off))
	default:
		h.t.Fatalf("unknown operation %v", o)
	}
}

func (h *harness) reopen() {
	h.t.Helper()
	d := h.d
	h.d = nil // Reopen closes it, whatever happens next
	h.d = h.f.Reopen(h.t, d)
	if got := h.d.Size(); got != h.oracle.Size() {
		h.fail("reopened disk has Size %d, want %d", got, h.oracle.Size())
	}
	if got := h.d.SectorSize(); got != h.c.sectorSize {
		h.fail("reopened disk has SectorSize %d, want %d", got, h.c.sectorSize)
	}
}

// checkExtents compares extents of the disk with the oracle's: exactly
// when the factory promises it, and otherwise checks that they are well
// formed and that Absent and Zero ranges read as zeros.
func (h *harness) checkExtents(off, length int64, got, want []disklayer.Extent) {
	h.t.Helper()
	if err := checkExtentShape(got, off, length, h.c.sectorSize); err != nil {
		h.fail("Extents(%d, %d): %v", off, length, err)
	}
	if h.f.ExtentsExact {
		if !slices.Equal(got, want) {
			h.fail("Extents(%d, %d) = %v, the model has %v", off, length, got, want)
		}
		return
	}
	content, _ := h.scratch(length)
	if _, err := h.d.ReadAt(content, off); err != nil {
		h.fail("ReadAt(%d, %d): %v", off, length, err)
	}
	if err := checkExtentsAgree(got, content, off); err != nil {
		h.fail("Extents(%d, %d) disagree with ReadAt: %v", off, length, err)
	}
}

func (h *harness) readOwn(o op) {
	h.t.Helper()
	reader, ok := h.d.(disklayer.OwnReader)
	if !ok {
		h.t.Fatalf("%v on a disk that is not an OwnReader", o)
	}
	got, want := h.scratch(o.length)
	var gotRuns, wantRuns []disklayer.Extent
	err := reader.ReadOwn(got, o.off, func(off, length int64) error {
		gotRuns = append(gotRuns, disklayer.Extent{Off: off, Len: length, Kind: disklayer.Absent})
		return nil
	})
	wantErr := h.oracle.ReadOwn(want, o.off, func(off, length int64) error {
		wantRuns = append(wantRuns, disklayer.Extent{Off: off, Len: length, Kind: disklayer.Absent})
		return nil
	})
	if !h.sameError(o, err, wantErr) {
		return
	}
	if diff := firstDiff(got, want, o.off); diff != "" {
		h.fail("%v: %s", o, diff)
	}
	// The absent runs must be the Absent extents of the disk itself, and,
	// when extents are exact, the model's.
	extents, err := collectExtents(h.d, o.off, o.length)
	if err != nil {
		h.fail("Extents(%d, %d): %v", o.off, o.length, err)
	}
	if absent := onlyKind(extents, disklayer.Absent); !slices.Equal(gotRuns, absent) {
		h.fail("%v reported absent runs %v, but its Absent extents are %v", o, gotRuns, absent)
	}
	if h.f.ExtentsExact && !slices.Equal(gotRuns, wantRuns) {
		h.fail("%v reported absent runs %v, the model %v", o, gotRuns, wantRuns)
	}
}

func onlyKind(list []disklayer.Extent, kind disklayer.ExtentKind) []disklayer.Extent {
	var out []disklayer.Extent
	for _, e := range list {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// verifyAll compares the whole disk with the oracle: content, and extents
// of the whole disk and of a few unaligned sub-ranges.
func (h *harness) verifyAll() {
	h.t.Helper()
	size := h.oracle.Size()
	got, want := h.scratch(size)
	if _, err := h.d.ReadAt(got, 0); err != nil {
		h.fail("ReadAt whole disk: %v", err)
	}
	if _, err := h.oracle.ReadAt(want, 0); err != nil {
		h.t.Fatalf("model ReadAt whole disk: %v", err)
	}
	if diff := firstDiff(got, want, 0); diff != "" {
		h.fail("whole disk: %s", diff)
	}
	ss := int64(h.c.sectorSize)
	for _, r := range [][2]int64{{0, size}, {1, size - 2}, {ss / 2, size - ss}, {size - ss - 3, ss + 3}} {
		off, length := r[0], r[1]
		if off < 0 || length < 0 || off+length > size {
			continue
		}
		gotExt, err := collectExtents(h.d, off, length)
		if err != nil {
			h.fail("Extents(%d, %d): %v", off, length, err)
		}
		wantExt, err := collectExtents(h.oracle, off, length)
		if err != nil {
			h.t.Fatalf("model Extents(%d, %d): %v", off, length, err)
		}
		h.checkExtents(off, length, gotExt, wantExt)
	}
}

// The random operation generator.

// opGen draws random operations for a disk of size bytes.
type opGen struct {
	rng        *rand.Rand
	size       int64
	sectorSize int64
	kinds      []opKind // the kinds the disk supports, with repeats as weights
}

func newOpGen(rng *rand.Rand, f Factory, d disklayer.Disk, size int64, sectorSize int) *opGen {
	g := &opGen{rng: rng, size: size, sectorSize: int64(sectorSize)}
	weights := map[opKind]int{opWrite: 8, opZero: 4, opRead: 5, opExtents: 2, opFlush: 1}
	if f.Reopen != nil {
		weights[opReopen] = 1
	}
	if _, ok := d.(disklayer.OwnReader); ok {
		weights[opReadOwn] = 2
	}
	if _, ok := d.(disklayer.ReadCacher); ok {
		weights[opFillAbsent] = 2
	}
	for k := range numOpKinds {
		for range weights[k] {
			g.kinds = append(g.kinds, k)
		}
	}
	return g
}

func (g *opGen) next() op {
	o := op{kind: g.kinds[g.rng.IntN(len(g.kinds))]}
	switch o.kind {
	case opFlush, opReopen:
		return o
	case opFillAbsent:
		// FillAbsent takes sector-aligned ranges only.
		sectors := g.size / g.sectorSize
		first := g.rng.Int64N(sectors)
		n := 1 + g.rng.Int64N(min(8, sectors-first))
		o.off = first * g.sectorSize
		o.data = g.data(n * g.sectorSize)
		o.length = n * g.sectorSize
		return o
	}
	o.off, o.length = g.rangeFor(o.kind)
	if o.kind == opWrite {
		o.data = g.data(o.length)
	}
	return o
}

// rangeFor draws an offset and length: mostly in range and near sector
// boundaries, sometimes zero-length, sometimes out of range.
func (g *opGen) rangeFor(kind opKind) (off, length int64) {
	ss := g.sectorSize
	sectors := g.size / ss
	if g.rng.IntN(20) == 0 {
		return g.outOfRange(kind)
	}
	point := func() int64 {
		p := g.rng.Int64N(sectors+1) * ss
		switch g.rng.IntN(4) {
		case 0:
			p += g.rng.Int64N(ss)
		case 1:
			p += g.rng.Int64N(5) - 2
		}
		return min(max(p, 0), g.size)
	}
	off = point()
	end := point()
	if g.rng.IntN(3) > 0 {
		// Keep most operations short: a few sectors.
		end = min(off+g.rng.Int64N(4*ss+1), g.size)
		if g.rng.IntN(2) == 0 {
			end = min((end+ss-1)/ss*ss, g.size)
		}
	}
	if end < off {
		off, end = end, off
	}
	return off, end - off
}

// outOfRange draws a range that every implementation must reject. Buffer
// operations only get ranges whose buffers can be allocated.
func (g *opGen) outOfRange(kind opKind) (off, length int64) {
	buffered := kind == opWrite || kind == opRead || kind == opReadOwn
	switch g.rng.IntN(5) {
	case 0:
		return -1 - g.rng.Int64N(g.sectorSize), g.rng.Int64N(g.sectorSize)
	case 1:
		return g.size + g.rng.Int64N(g.sectorSize) + 1, g.rng.Int64N(2)
	case 2:
		return g.size - g.rng.Int64N(g.sectorSize), g.sectorSize + 1
	case 3:
		if !buffered {
			return g.rng.Int64N(g.size + 1), -1 - g.rng.Int64N(g.sectorSize)
		}
	}
	if buffered {
		return math.MaxInt64 - g.rng.Int64N(g.sectorSize), 1 + g.rng.Int64N(g.sectorSize)
	}
	return 1 + g.rng.Int64N(g.size), math.MaxInt64 - g.rng.Int64N(2)
}

// data draws content: random bytes, all zeros, or zeros with a few bytes
// set, so writes create data, tombstones and everything in between.
func (g *opGen) data(n int64) []byte {
	p := make([]byte, n)
	switch g.rng.IntN(4) {
	case 0:
		// all zeros
	case 1:
		for range 1 + g.rng.IntN(3) {
			if n > 0 {
				p[g.rng.Int64N(n)] = byte(1 + g.rng.IntN(255))
			}
		}
	default:
		testbytes.Random(g.rng, p)
	}
	return p
}

// testRandomOps checks seeded random operation sequences byte for byte
// against the model.
func (f Factory) testRandomOps(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		rng := rand.New(rand.NewPCG(seed(t), 0))
		sequences, steps := 3, 300
		if testing.Short() {
			sequences, steps = 1, 150
		}
		for range sequences {
			size := (1 + rng.Int64N(40)) * int64(c.sectorSize)
			h := newHarness(t, f, c, size)
			gen := newOpGen(rng, f, h.d, size, c.sectorSize)
			for i := range steps {
				h.apply(gen.next())
				if i%50 == 49 {
					h.verifyAll()
				}
			}
			h.verifyAll()
			if err := h.d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			h.d = nil
		}
	})
}
