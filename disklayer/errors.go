package disklayer

import (
	"errors"
	"fmt"
	"syscall"
)

// Errors, grouped by when they happen. Every error a layer returns wraps
// one of these (or an I/O error from below) with the operation and the
// file, so callers test with errors.Is.
var (
	// Opening and creating.

	// ErrNotLayer: the file is not a hibdisk layer (not SQLite, or a
	// SQLite database with another application_id).
	ErrNotLayer = errors.New("not a hibdisk layer")
	// ErrForeignFormat: the file is an image of another format (qcow2,
	// vmdk, vhdx, ...; found by its magic number) that hibdisk does not
	// read, so it is refused rather than read as raw bytes.
	ErrForeignFormat = errors.New("image format hibdisk does not read")
	// ErrUnsupportedVersion: the layer's schema is newer than this build
	// understands.
	ErrUnsupportedVersion = errors.New("unsupported layer schema version")
	// ErrNeedsMigration: a read-only open of a layer whose schema is too
	// old for what was asked of it (hibfile: the seed's v0 hibernate
	// tables); opening it writable once migrates it. It has the text of
	// internal/store's error, which the SQLite layer (package sqlitelayer)
	// maps to it, so every package reports the one text and the contract
	// does not import the engine.
	ErrNeedsMigration = errors.New("schema needs migration; open it writable once (hibdisk check --repair)")
	// ErrCorrupt: the database or its layer row is damaged or
	// inconsistent (truncated file, malformed row, blob of the wrong size).
	ErrCorrupt = errors.New("corrupt layer")
	// ErrParentMismatch: a diff layer's parent is missing or is not the
	// file the layer was created over (uuid, size or content digest
	// differ).
	ErrParentMismatch = errors.New("parent mismatch")
	// ErrInvalid: an argument is malformed (sector size not a power of two
	// in range, size not a multiple of the sector size, negative size).
	ErrInvalid = errors.New("invalid argument")

	// Reading and writing.

	// ErrOutOfRange: an offset or length is negative, overflows, or
	// reaches past the end of the disk.
	ErrOutOfRange = errors.New("out of range")
	// ErrReadOnly: a write, zero, or metadata change on a read-only layer.
	ErrReadOnly = errors.New("read-only layer")
	// ErrClosed: the layer was closed.
	ErrClosed = errors.New("layer closed")
	// ErrNoSpace: the filesystem holding the layer is full (SQLite's
	// SQLITE_FULL, or ENOSPC or EDQUOT from below). It wraps
	// syscall.ENOSPC, so code that classifies errors by errno (the NBD
	// server) reports ENOSPC. What a commit that fails for lack of space
	// does to the writes of its batch is set out in the SQLite layer's
	// package documentation (package sqlitelayer, # Invariants).
	ErrNoSpace error = noSpaceError{}
	// ErrWriteLost: a read of a sector whose write had returned but was
	// lost with its batch when a commit failed for lack of space. The
	// layer holds the sector's older content, which must not be passed
	// off as the sector's content; a write of the whole sector clears it.
	ErrWriteLost = errors.New("a write that had returned was lost (no space on the layer's filesystem)")
)

// SizeError is the ErrInvalid of a disk size that is negative, larger
// than 2^60, or not a multiple of the sector size: a caller can name
// the fix (a smaller sector size, a rounded size) from its fields.
type SizeError struct {
	Size       int64
	SectorSize int
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("disk size %d: want a multiple of the %d-byte sector size in [0, 2^60]: %v", e.Size, e.SectorSize, ErrInvalid)
}

func (e *SizeError) Unwrap() error { return ErrInvalid }

// noSpaceError is ErrNoSpace's type: it unwraps to syscall.ENOSPC.
type noSpaceError struct{}

func (noSpaceError) Error() string { return "no space left on the layer's filesystem" }
func (noSpaceError) Unwrap() error { return syscall.ENOSPC }

// FileError records the layer file an operation failed on, as
// fs.PathError does for a system call: the innermost FileError of an
// error names the file at fault (the parent, not the child it was opened
// through), so a command line can say which file to look at.
type FileError struct {
	Op   string // "open layer", "create layer"
	Path string
	Err  error
}

func (e *FileError) Error() string { return fmt.Sprintf("%s %q: %v", e.Op, e.Path, e.Err) }

func (e *FileError) Unwrap() error { return e.Err }
