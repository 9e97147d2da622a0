// Package memlayer is an in-memory disklayer.Disk that models the row
// semantics of package disklayer exactly. It is the test oracle that the
// conformance suite (package layertest) compares every other layer
// against, so it is written to be obviously correct rather than fast.
//
// # Invariants
//
// The layer is a map from sector number to a row, mirroring the SQLite
// sectors table:
//   - no entry: Absent, the layer says nothing about the sector;
//   - an entry whose data is nil: a tombstone (Zero), the sector reads as
//     zeros and hides the parent;
//   - otherwise the data is exactly one sector, and never all zero (Data).
//
// Every change to a sector goes through one rule (store): the sector's new
// content is computed in full, then stored as data when it has a non-zero
// byte, as a tombstone when it is all zero and the layer has a parent, and
// as no row when it is all zero and nothing below could show through.
//
// A write or Zero that covers part of a sector is a read-modify-write of
// this layer's own content, where Absent reads as zeros; the merged
// sector is then stored by the rule above. So a partial write of zeros, or
// a partial Zero, over an Absent sector of a layer with a parent leaves a
// tombstone. (A stack never does that: it merges partial sectors with the
// layers below before writing to the top layer.)
//
// A Layer is safe for concurrent use; every method takes the lock for its
// whole effect, so reads see every write that completed before them.
package memlayer

import (
	"bytes"
	"fmt"
	"iter"
	"maps"
	"slices"
	"sync"

	"github.com/hibdisk/hibdisk/disklayer"
)

// Layer is an in-memory sparse disk. The zero value is not usable; call New.
type Layer struct {
	sectorSize int
	hasParent  bool

	mu     sync.RWMutex
	size   int64
	rows   map[int64][]byte // sector -> data; a nil slice is a tombstone
	closed bool
}

// The abilities the conformance suite exercises.
var (
	_ disklayer.Disk       = (*Layer)(nil)
	_ disklayer.OwnReader  = (*Layer)(nil)
	_ disklayer.ReadCacher = (*Layer)(nil)
)

// Row is one row of the layer's sector table.
type Row struct {
	Sector int64
	// Data is one sector of non-zero content, or nil for a tombstone.
	Data []byte
}

// New returns an empty layer of size bytes. hasParent says whether lower
// layers could show through, which decides whether all-zero sectors become
// tombstones (true) or no row (false).
func New(size int64, sectorSize int, hasParent bool) (*Layer, error) {
	if err := checkGeometry(size, sectorSize); err != nil {
		return nil, fmt.Errorf("new memlayer: %w", err)
	}
	return &Layer{
		sectorSize: sectorSize,
		hasParent:  hasParent,
		size:       size,
		rows:       make(map[int64][]byte),
	}, nil
}

func checkGeometry(size int64, sectorSize int) error {
	if !disklayer.ValidSectorSize(sectorSize) {
		return fmt.Errorf("sector size %d: %w", sectorSize, disklayer.ErrInvalid)
	}
	if size < 0 || size%int64(sectorSize) != 0 {
		return fmt.Errorf("size %d is not a non-negative multiple of the %d-byte sector: %w", size, sectorSize, disklayer.ErrInvalid)
	}
	return nil
}

// Size is the disk size in bytes.
func (l *Layer) Size() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.size
}

// SectorSize is the allocation unit in bytes.
func (l *Layer) SectorSize() int { return l.sectorSize }

// HasParent reports whether all-zero sectors are kept as tombstones.
func (l *Layer) HasParent() bool { return l.hasParent }

// ReadAt reads the layer's own content: zeros for Absent and Zero sectors.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if err := l.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	l.read(p, off)
	return len(p), nil
}

// WriteAt writes p at off; partial sectors are read-modify-written.
func (l *Layer) WriteAt(p []byte, off int64) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	l.modify(off, int64(len(p)), func(sector []byte, at int64) {
		copy(sector, p[at-off:])
	})
	return len(p), nil
}

// Zero makes [off, off+length) read as zeros.
func (l *Layer) Zero(off, length int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.check("zero", off, length); err != nil {
		return err
	}
	l.modify(off, length, func(sector []byte, at int64) {
		clear(sector[:min(int64(len(sector)), off+length-at)])
	})
	return nil
}

// Flush does nothing but report a closed layer: memory is as durable as
// this layer gets.
func (l *Layer) Flush() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return fmt.Errorf("flush memlayer: %w", disklayer.ErrClosed)
	}
	return nil
}

// Close drops the content. Later calls, Close included, return ErrClosed.
func (l *Layer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("close memlayer: %w", disklayer.ErrClosed)
	}
	l.closed = true
	l.rows = nil
	return nil
}

// Extents yields the allocation of [off, off+length). The map is taken
// under the lock and yielded after releasing it, so the loop body may call
// back into the layer.
func (l *Layer) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	return func(yield func(disklayer.Extent, error) bool) {
		l.mu.RLock()
		err := l.check("extents", off, length)
		var list []disklayer.Extent
		if err == nil {
			list = l.extents(off, length)
		}
		l.mu.RUnlock()
		if err != nil {
			yield(disklayer.Extent{}, err)
			return
		}
		for _, e := range list {
			if !yield(e, nil) {
				return
			}
		}
	}
}

// ReadOwn fills p like ReadAt and calls absent for each maximal Absent run
// of [off, off+len(p)), after releasing the lock.
func (l *Layer) ReadOwn(p []byte, off int64, absent func(off, length int64) error) error {
	l.mu.RLock()
	err := l.check("read own", off, int64(len(p)))
	var list []disklayer.Extent
	if err == nil {
		l.read(p, off)
		list = l.extents(off, int64(len(p)))
	}
	l.mu.RUnlock()
	if err != nil {
		return err
	}
	for _, e := range list {
		if e.Kind != disklayer.Absent {
			continue
		}
		if err := absent(e.Off, e.Len); err != nil {
			return err
		}
	}
	return nil
}

// FillAbsent stores p at off into the sectors that have no row, leaving
// data and tombstones alone. off and len(p) must be sector aligned.
func (l *Layer) FillAbsent(p []byte, off int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.check("fill absent", off, int64(len(p))); err != nil {
		return err
	}
	ss := int64(l.sectorSize)
	if off%ss != 0 || int64(len(p))%ss != 0 {
		return fmt.Errorf("fill absent at %d length %d: not aligned to %d-byte sectors: %w", off, len(p), ss, disklayer.ErrInvalid)
	}
	for i := int64(0); i < int64(len(p)); i += ss {
		sector := (off + i) / ss
		if _, ok := l.rows[sector]; !ok {
			l.store(sector, p[i:i+ss])
		}
	}
	return nil
}

// Rows returns a copy of the sector table in sector order.
func (l *Layer) Rows() []Row {
	l.mu.RLock()
	defer l.mu.RUnlock()
	rows := make([]Row, 0, len(l.rows))
	for _, sector := range slices.Sorted(maps.Keys(l.rows)) {
		rows = append(rows, Row{Sector: sector, Data: slices.Clone(l.rows[sector])})
	}
	return rows
}

// Resize changes the disk size. Shrinking drops the rows past the new
// end; growing adds Absent sectors.
func (l *Layer) Resize(size int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("resize memlayer: %w", disklayer.ErrClosed)
	}
	if err := checkGeometry(size, l.sectorSize); err != nil {
		return fmt.Errorf("resize memlayer: %w", err)
	}
	end := size / int64(l.sectorSize)
	maps.DeleteFunc(l.rows, func(sector int64, _ []byte) bool { return sector >= end })
	l.size = size
	return nil
}

// check validates an operation; the caller holds the lock.
func (l *Layer) check(op string, off, length int64) error {
	if l.closed {
		return fmt.Errorf("%s memlayer: %w", op, disklayer.ErrClosed)
	}
	if err := disklayer.CheckRange(off, length, l.size); err != nil {
		return fmt.Errorf("%s memlayer: %w", op, err)
	}
	return nil
}

// read copies the own content of [off, off+len(p)) into p.
func (l *Layer) read(p []byte, off int64) {
	ss := int64(l.sectorSize)
	for done := int64(0); done < int64(len(p)); {
		at := off + done
		inSector := at % ss
		n := min(ss-inSector, int64(len(p))-done)
		dst := p[done : done+n]
		if data := l.rows[at/ss]; data != nil {
			copy(dst, data[inSector:])
		} else {
			clear(dst)
		}
		done += n
	}
}

// modify applies change to every sector that [off, off+length) touches.
// change gets a copy of the sector's own content and the sector's byte
// offset, edits it in place, and the result is stored by the row rule.
func (l *Layer) modify(off, length int64, change func(sector []byte, at int64)) {
	if length == 0 {
		return
	}
	ss := int64(l.sectorSize)
	buf := make([]byte, ss)
	for sector := off / ss; sector <= (off+length-1)/ss; sector++ {
		at := sector * ss
		if data := l.rows[sector]; data != nil {
			copy(buf, data)
		} else {
			clear(buf)
		}
		// change edits the part of the sector inside the range; pass the
		// sub-slice starting where the range starts in this sector.
		start := max(off, at)
		change(buf[start-at:], start)
		l.store(sector, buf)
	}
}

// store records one sector's full content by the row rule.
func (l *Layer) store(sector int64, content []byte) {
	switch {
	case !allZero(content):
		l.rows[sector] = slices.Clone(content)
	case l.hasParent:
		l.rows[sector] = nil
	default:
		delete(l.rows, sector)
	}
}

// extents lists the merged allocation of a valid range; the caller holds
// the lock. It walks the stored rows, not every sector, so a huge sparse
// layer costs only what it holds.
func (l *Layer) extents(off, length int64) []disklayer.Extent {
	if length == 0 {
		return nil
	}
	ss := int64(l.sectorSize)
	end := off + length
	first, last := off/ss, (end-1)/ss
	var held []int64
	for sector := range l.rows {
		if sector >= first && sector <= last {
			held = append(held, sector)
		}
	}
	slices.Sort(held)

	var list []disklayer.Extent
	add := func(from, to int64, kind disklayer.ExtentKind) {
		from, to = max(from, off), min(to, end)
		if from >= to {
			return
		}
		if n := len(list); n > 0 && list[n-1].Kind == kind && list[n-1].End() == from {
			list[n-1].Len += to - from
			return
		}
		list = append(list, disklayer.Extent{Off: from, Len: to - from, Kind: kind})
	}
	pos := first * ss
	for _, sector := range held {
		add(pos, sector*ss, disklayer.Absent)
		kind := disklayer.Data
		if l.rows[sector] == nil {
			kind = disklayer.Zero
		}
		add(sector*ss, (sector+1)*ss, kind)
		pos = (sector + 1) * ss
	}
	add(pos, end, disklayer.Absent)
	return list
}

// zeroSector is compared against: b is at most one sector.
var zeroSector [disklayer.MaxSectorSize]byte

func allZero(b []byte) bool { return bytes.Equal(b, zeroSector[:len(b)]) }
