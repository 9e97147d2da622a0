package memlayer_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/layertest"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
)

var factory = layertest.Factory{
	New: func(t *testing.T, size int64, sectorSize int, hasParent bool) disklayer.Disk {
		l, err := memlayer.New(size, sectorSize, hasParent)
		if err != nil {
			t.Fatal(err)
		}
		return l
	},
	SectorSizes:  []int{512, 1024, 4096, 65536},
	WithParent:   true,
	ExtentsExact: true,
}

// The suite compares memlayer with itself, so what it adds here is its
// own structural checks (extent shape, ReadOwn against Extents, errors,
// concurrency); the row model is pinned by the tests below.
func TestConformance(t *testing.T) { layertest.Run(t, factory) }

func FuzzMemlayer(f *testing.F) { layertest.FuzzOps(f, factory) }

const ss = 512

func newLayer(t *testing.T, sectors int64, hasParent bool) *memlayer.Layer {
	t.Helper()
	l, err := memlayer.New(sectors*ss, ss, hasParent)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func write(t *testing.T, l *memlayer.Layer, p []byte, off int64) {
	t.Helper()
	if _, err := l.WriteAt(p, off); err != nil {
		t.Fatalf("WriteAt(%d bytes, %d): %v", len(p), off, err)
	}
}

func zero(t *testing.T, l *memlayer.Layer, off, length int64) {
	t.Helper()
	if err := l.Zero(off, length); err != nil {
		t.Fatalf("Zero(%d, %d): %v", off, length, err)
	}
}

func sector(b ...byte) []byte {
	p := make([]byte, ss)
	copy(p, b)
	return p
}

func TestRowsWithoutParent(t *testing.T) {
	l := newLayer(t, 8, false)
	write(t, l, fill(ss, 1), 0)         // sector 0: data
	write(t, l, make([]byte, ss), 1*ss) // sector 1: zeros over nothing: no row
	write(t, l, fill(2*ss, 2), 2*ss)    // sectors 2, 3: data
	write(t, l, make([]byte, ss), 2*ss) // sector 2: zeros over data: row dropped
	zero(t, l, 3*ss+1, ss-1)            // sector 3: partial zero keeps byte 0
	write(t, l, []byte{7}, 5*ss+10)     // sector 5: RMW of nothing
	write(t, l, fill(ss, 6), 6*ss)      // sector 6: data
	zero(t, l, 6*ss, ss)                // then zeroed: dropped
	want := []memlayer.Row{
		{Sector: 0, Data: fill(ss, 1)},
		{Sector: 3, Data: sector(2)},
		{Sector: 5, Data: func() []byte { p := sector(); p[10] = 7; return p }()},
	}
	if diff := cmp.Diff(want, l.Rows()); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}

func TestRowsWithParent(t *testing.T) {
	l := newLayer(t, 8, true)
	write(t, l, fill(ss, 1), 0)         // sector 0: data
	write(t, l, make([]byte, ss), 1*ss) // sector 1: zeros over nothing: tombstone
	write(t, l, fill(ss, 2), 2*ss)      // sector 2: data,
	zero(t, l, 2*ss+ss/2, ss/2)         // half zeroed: still data
	write(t, l, []byte{3}, 3*ss+4)      // sector 3: one byte,
	write(t, l, []byte{0}, 3*ss+4)      // zeroed again: tombstone
	zero(t, l, 4*ss+1, 1)               // sector 4: partial Zero of nothing: tombstone
	zero(t, l, 6*ss, 2*ss)              // sectors 6, 7: tombstones
	want := []memlayer.Row{
		{Sector: 0, Data: fill(ss, 1)},
		{Sector: 1},
		{Sector: 2, Data: append(fill(ss/2, 2), make([]byte, ss/2)...)},
		{Sector: 3},
		{Sector: 4},
		{Sector: 6},
		{Sector: 7},
	}
	if diff := cmp.Diff(want, l.Rows()); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	got := slices.Collect(func(yield func(disklayer.Extent) bool) {
		for e, err := range l.Extents(ss/2, 8*ss-ss) {
			if err != nil {
				t.Fatalf("Extents: %v", err)
			}
			if !yield(e) {
				return
			}
		}
	})
	wantExtents := []disklayer.Extent{
		{Off: ss / 2, Len: ss / 2, Kind: disklayer.Data},
		{Off: ss, Len: ss, Kind: disklayer.Zero},
		{Off: 2 * ss, Len: ss, Kind: disklayer.Data},
		{Off: 3 * ss, Len: 2 * ss, Kind: disklayer.Zero},
		{Off: 5 * ss, Len: ss, Kind: disklayer.Absent},
		{Off: 6 * ss, Len: ss + ss/2, Kind: disklayer.Zero},
	}
	if diff := cmp.Diff(wantExtents, got); diff != "" {
		t.Errorf("extents (-want +got):\n%s", diff)
	}
}

func TestReadOwnAndFillAbsent(t *testing.T) {
	l := newLayer(t, 6, true)
	write(t, l, fill(ss, 1), 1*ss)
	zero(t, l, 3*ss, ss)
	if err := l.FillAbsent(fill(6*ss, 9), 0); err != nil {
		t.Fatalf("FillAbsent: %v", err)
	}
	if err := l.FillAbsent(make([]byte, ss), 5*ss); err != nil { // already filled: no change
		t.Fatalf("FillAbsent: %v", err)
	}
	want := slices.Concat(fill(ss, 9), fill(ss, 1), fill(ss, 9), make([]byte, ss), fill(2*ss, 9))
	got := make([]byte, 6*ss)
	var absent [][2]int64
	if err := l.ReadOwn(got, 0, func(off, length int64) error {
		absent = append(absent, [2]int64{off, length})
		return nil
	}); err != nil {
		t.Fatalf("ReadOwn: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("content after FillAbsent differs")
	}
	if len(absent) != 0 {
		t.Errorf("absent runs after filling everything: %v", absent)
	}
	if err := l.FillAbsent(fill(ss, 1), 1); !errors.Is(err, disklayer.ErrInvalid) {
		t.Errorf("unaligned FillAbsent = %v, want ErrInvalid", err)
	}
}

func TestResize(t *testing.T) {
	l := newLayer(t, 4, false)
	write(t, l, fill(4*ss, 5), 0)
	if err := l.Resize(2 * ss); err != nil {
		t.Fatal(err)
	}
	if err := l.Resize(6 * ss); err != nil {
		t.Fatal(err)
	}
	if got := l.Size(); got != 6*ss {
		t.Errorf("Size = %d, want %d", got, 6*ss)
	}
	got := make([]byte, 6*ss)
	if _, err := l.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if want := append(fill(2*ss, 5), make([]byte, 4*ss)...); !bytes.Equal(got, want) {
		t.Errorf("after shrink and grow, the dropped sectors are not zero")
	}
	if err := l.Resize(ss + 1); !errors.Is(err, disklayer.ErrInvalid) {
		t.Errorf("Resize to a partial sector = %v, want ErrInvalid", err)
	}
}

func TestNewRejectsBadGeometry(t *testing.T) {
	for _, c := range []struct {
		size       int64
		sectorSize int
	}{{512, 256}, {4096, 3000}, {4096, 1 << 17}, {1000, 512}, {-512, 512}} {
		if _, err := memlayer.New(c.size, c.sectorSize, false); !errors.Is(err, disklayer.ErrInvalid) {
			t.Errorf("New(%d, %d) = %v, want ErrInvalid", c.size, c.sectorSize, err)
		}
	}
}
