package layertest

import (
	"math"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
)

// FuzzOps is the shared fuzz driver: it decodes the fuzz input into a
// configuration and a sequence of operations (writes, Zero, reads,
// extents, Flush, Reopen, and ReadOwn and FillAbsent where implemented),
// with offsets and lengths that may be unaligned, past the end, negative
// or overflowing, and checks every outcome against memlayer like the
// random subtest of Run does.
//
// Input layout: byte 0 picks the sector size from f.SectorSizes, byte 1
// bit 0 the parent (when f.WithParent), byte 2 the disk size (1 to 16
// sectors); then each operation is a kind byte followed by its
// arguments, see decodeOps. A short input means zeros.
func FuzzOps(fz *testing.F, f Factory) {
	if f.New == nil || len(f.SectorSizes) == 0 {
		fz.Fatal("layertest.Factory needs New and at least one sector size")
	}
	fz.Add([]byte{})
	fz.Add([]byte{0, 1, 3, 0, 1, 5, 0, 9, 2, 0x11, 1, 2, 2, 0, 0, 3, 2, 0, 1, 3})
	fz.Add([]byte{1, 0, 15, 0, 7, 200, 6, 1, 5, 1, 7, 0, 3, 2, 7, 1, 7, 0xff, 3, 6, 0, 0, 0, 1})
	fz.Add([]byte{0, 1, 0, 7, 0, 0, 6, 2, 1, 6, 0, 0, 0, 1, 7, 0, 0, 6, 0, 1, 4, 1, 1, 2, 0, 0})
	fz.Fuzz(func(t *testing.T, input []byte) {
		in := fuzzInput{data: input}
		c := config{sectorSize: f.SectorSizes[int(in.byte())%len(f.SectorSizes)]}
		c.hasParent = f.WithParent && in.byte()&1 == 1
		ss := int64(c.sectorSize)
		size := (1 + int64(in.byte()%16)) * ss
		h := newHarness(t, f, c, size)
		_, ownReader := h.d.(disklayer.OwnReader)
		_, cacher := h.d.(disklayer.ReadCacher)
		for o := range decodeOps(&in, size, ss) {
			switch {
			case o.kind == opReopen && f.Reopen == nil,
				o.kind == opReadOwn && !ownReader,
				o.kind == opFillAbsent && !cacher:
				continue
			}
			h.apply(o)
		}
		h.verifyAll()
	})
}

// fuzzInput reads bytes from the fuzz input, zeros once it runs out.
type fuzzInput struct {
	data []byte
}

func (in *fuzzInput) byte() byte {
	if len(in.data) == 0 {
		return 0
	}
	b := in.data[0]
	in.data = in.data[1:]
	return b
}

func (in *fuzzInput) empty() bool { return len(in.data) == 0 }

// decodeOps yields operations until the input runs out. Each is a kind
// byte, then for ranged kinds an offset and a length (see position), and
// for writes a content byte: 0 writes zeros, 1 zeros with one set byte,
// anything else a pattern seeded by it.
func decodeOps(in *fuzzInput, size, ss int64) func(yield func(op) bool) {
	return func(yield func(op) bool) {
		for !in.empty() {
			o := op{kind: opKind(in.byte() % byte(numOpKinds))}
			switch o.kind {
			case opFlush, opReopen:
			case opFillAbsent:
				// Aligned by contract: sector numbers, not offsets.
				first := int64(in.byte()) % (size / ss)
				count := 1 + int64(in.byte())%(size/ss-first)
				o.off, o.length = first*ss, count*ss
				o.data = fuzzContent(in.byte(), o.length)
			default:
				buffered := o.kind == opWrite || o.kind == opRead || o.kind == opReadOwn
				o.off = position(in, size, ss, false)
				o.length = position(in, size, ss, buffered)
				if buffered && (o.length < 0 || o.length > size+ss) {
					o.length = size + 1
				}
				if o.kind == opWrite {
					o.data = fuzzContent(in.byte(), o.length)
				}
			}
			if !yield(o) {
				return
			}
		}
	}
}

// position decodes an offset or length from a mode byte and an amount
// byte: mostly small values around sector boundaries, sometimes the
// extremes that must be rejected.
func position(in *fuzzInput, size, ss int64, buffered bool) int64 {
	mode, amount := in.byte(), int64(in.byte())
	switch mode % 8 {
	case 0, 1, 2:
		return amount % (size + 1) // any byte offset of a small disk
	case 3, 4:
		return (amount % (size/ss + 1)) * ss // a sector boundary
	case 5:
		return (amount%(size/ss+1))*ss + amount%5 - 2 // near a boundary
	case 6:
		return size + amount%3 - 1
	}
	if buffered {
		return size + 1
	}
	return [...]int64{-1, -ss, math.MaxInt64, math.MinInt64, math.MaxInt64 - 1, size + ss}[amount%6]
}

func fuzzContent(b byte, n int64) []byte {
	p := make([]byte, n)
	switch b {
	case 0:
	case 1:
		if n > 0 {
			p[n/2] = 0x5a
		}
	default:
		for i := range p {
			p[i] = byte(i*int(b)>>3) + b
		}
	}
	return p
}
