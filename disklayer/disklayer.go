package disklayer

import (
	"fmt"
	"io"
	"iter"
	"math/bits"
)

// Layer is the read side of one layer: its own content, without anything
// below it. ReadAt returns zeros for ranges the layer does not store
// (Absent) and for tombstones (Zero); a stack (package diffdisk) uses
// Extents to decide which ranges to take from lower layers instead.
//
// ReadAt follows io.ReaderAt, except that a range that reaches past Size
// is an error wrapping ErrOutOfRange rather than a short read with io.EOF:
// a disk has no partial sectors at its end. A zero-length read anywhere in
// [0, Size] succeeds.
type Layer interface {
	io.ReaderAt
	// Size is the number of bytes the guest sees. It is a multiple of
	// SectorSize.
	Size() int64
	// SectorSize is the layer's allocation unit in bytes: a power of two
	// between MinSectorSize and MaxSectorSize.
	SectorSize() int
	// Extents yields, in order and without gaps, the allocation of
	// [off, off+length): runs of Absent, Zero and Data, each at least one
	// byte, adjacent runs of the same kind merged. Extent boundaries
	// that fall inside the range are sector aligned; the first and last
	// extent are clipped to the range. A failure is yielded once as a
	// non-nil error and ends the sequence.
	Extents(off, length int64) iter.Seq2[Extent, error]
}

// Disk is a writable layer.
type Disk interface {
	Layer
	// WriteAt follows io.WriterAt. Writes need not be sector aligned: the
	// partial sectors at either end are read, merged and written back
	// (read-modify-write). A range past Size wraps ErrOutOfRange; a
	// read-only disk returns ErrReadOnly.
	io.WriterAt
	// Zero makes [off, off+length) read as zeros. It serves both
	// write-zeroes and trim/discard: whole sectors become tombstones (or
	// are dropped when nothing below could show through); partial sectors
	// at the ends are zeroed by read-modify-write.
	Zero(off, length int64) error
	// Flush makes every write that completed before it durable: after
	// Flush returns nil, the data survives kill -9 and power loss.
	Flush() error
	// Close flushes and releases the layer. Using a closed Disk returns
	// ErrClosed.
	io.Closer
}

// ExtentKind says what a layer holds for a range.
type ExtentKind uint8

const (
	// Absent: the layer stores nothing here; reads fall through to the
	// layer below (zeros when there is none).
	Absent ExtentKind = iota
	// Zero: the range reads as zeros and hides lower layers (a tombstone,
	// a NULL row in the SQLite format).
	Zero
	// Data: the layer stores bytes for the range (which may still happen
	// to be zero, e.g. in a raw image).
	Data
)

func (k ExtentKind) String() string {
	switch k {
	case Absent:
		return "absent"
	case Zero:
		return "zero"
	case Data:
		return "data"
	}
	return fmt.Sprintf("ExtentKind(%d)", uint8(k))
}

// Extent is one run of an allocation map.
type Extent struct {
	Off  int64
	Len  int64
	Kind ExtentKind
}

// End is the offset just past the extent.
func (e Extent) End() int64 { return e.Off + e.Len }

// Range is [Off, Off+Len) in bytes: where two views differ, where a
// blob lies.
type Range struct {
	Off int64 `json:"offset"`
	Len int64 `json:"length"`
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Off + r.Len }

// Sector size limits.
const (
	MinSectorSize     = 512
	MaxSectorSize     = 65536
	DefaultSectorSize = 4096
)

// CheckRange validates an access of length bytes at off against a disk of
// size bytes. It rejects negative values and int64 overflow; a zero-length
// access at any offset in [0, size] is valid.
func CheckRange(off, length, size int64) error {
	if off < 0 || length < 0 {
		return fmt.Errorf("offset %d length %d: %w", off, length, ErrOutOfRange)
	}
	end, carry := bits.Add64(uint64(off), uint64(length), 0)
	if carry != 0 || end > uint64(size) {
		return fmt.Errorf("offset %d length %d past end of %d-byte disk: %w", off, length, size, ErrOutOfRange)
	}
	return nil
}

// ValidSectorSize reports whether n is a power of two between
// MinSectorSize and MaxSectorSize.
func ValidSectorSize(n int) bool {
	return n >= MinSectorSize && n <= MaxSectorSize && n&(n-1) == 0
}

// Optional abilities, found by type assertion.

// OwnReader is implemented by layers that can read their own content and
// report what they do not store in one pass. ReadOwn fills p with the
// layer's content at off (zeros for Absent and Zero ranges) and calls
// absent for each maximal Absent run, in order, so a stack can fill those
// runs from below without a separate Extents query.
type OwnReader interface {
	ReadOwn(p []byte, off int64, absent func(off, length int64) error) error
}

// ReadCacher is implemented by writable layers that can be populated
// from below without hiding newer data: FillAbsent stores p at off only
// into sectors the layer does not hold (no row), never overwriting a row
// that is there. off and len(p) are sector aligned.
type ReadCacher interface {
	FillAbsent(p []byte, off int64) error
}
