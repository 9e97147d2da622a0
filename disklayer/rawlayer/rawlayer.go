// Package rawlayer serves raw disk images (.img files) as disklayer
// layers, read-only or read-write. A raw image is always the bottom of a
// chain: what it does not store reads as zeros.
//
// # Invariants
//
// Size is the file size rounded up to the sector size (512 bytes unless
// WithSectorSize says otherwise), as QEMU does: the bytes of a file whose
// size is not a multiple of the sector size all stay visible, and the
// partial last sector reads as zeros past the end of the file. A write
// that touches that tail extends the file, up to Size at most; opening
// never changes the file.
//
// Extents reports holes of the sparse file (lseek SEEK_HOLE/SEEK_DATA) as
// Absent and everything else as Data; a raw file cannot tell written
// zeros from data, so it never reports Zero. Boundaries are rounded to
// sectors in favour of Data. On systems without SEEK_DATA, or filesystems
// without holes, the whole file is Data.
//
// Zero punches holes (fallocate PUNCH_HOLE|KEEP_SIZE) over the whole
// sectors of the range and writes zeros at the partial sectors of its
// ends; where punching is unsupported it writes zeros.
//
// ReadAt and WriteAt are pread and pwrite: a Layer is safe for concurrent
// use, and a read sees every write that completed before it. Flush is
// fsync.
package rawlayer

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"sync"
	"syscall"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/lock"
)

// DefaultSectorSize is the sector size of a raw image unless
// WithSectorSize says otherwise: what QEMU assumes for raw files.
const DefaultSectorSize = 512

// Layer is an open raw image.
type Layer struct {
	path       string
	sectorSize int
	size       int64
	readOnly   bool
	unsynced   bool // Unsynced: Flush and Close do not fsync

	// mu guards closed against Close: every operation holds it shared
	// while it uses the file, Close holds it exclusively.
	mu     sync.RWMutex
	file   *os.File
	closed bool
	held   *lock.Lock // Create and writable opens: lock.Exclusive
}

var _ disklayer.Disk = (*Layer)(nil)

// Option configures Open and Create.
type Option func(*options)

type options struct {
	sectorSize int
	stable     bool
	unsynced   bool
}

// Unsynced makes Flush and Close leave the writes to the kernel instead
// of fsyncing them, as QEMU's cache=unsafe does: for a private output
// (`hibdisk convert -t unsafe`) that a crash makes one write again.
func Unsynced() Option {
	return func(o *options) { o.unsynced = true }
}

// HoldStable holds a read-only image so that nobody may write it while
// it is open (lock.Stable): for a base under a chain. A read-only open
// without it tolerates writers (lock.Shared); a writable open always
// holds the image exclusively.
func HoldStable() Option {
	return func(o *options) { o.stable = true }
}

// WithSectorSize sets the sector size: a power of two between
// disklayer.MinSectorSize and disklayer.MaxSectorSize.
func WithSectorSize(n int) Option {
	return func(o *options) { o.sectorSize = n }
}

func collect(opts []Option) (options, error) {
	o := options{sectorSize: DefaultSectorSize}
	for _, opt := range opts {
		opt(&o)
	}
	if !disklayer.ValidSectorSize(o.sectorSize) {
		return o, fmt.Errorf("sector size %d: %w", o.sectorSize, disklayer.ErrInvalid)
	}
	return o, nil
}

// Open opens the raw image at path.
func Open(path string, readOnly bool, opts ...Option) (*Layer, error) {
	o, err := collect(opts)
	if err != nil {
		return nil, fmt.Errorf("open raw image %q: %w", path, err)
	}
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open raw image: %w", err)
	}
	info, err := f.Stat()
	if err == nil && info.IsDir() {
		err = fmt.Errorf("is a directory: %w", disklayer.ErrInvalid)
	}
	var fileSize int64
	if err == nil {
		// Seeking to the end also sizes block devices, whose Stat size
		// is zero.
		fileSize, err = f.Seek(0, io.SeekEnd)
	}
	var held *lock.Lock
	if err == nil {
		mode := lock.Shared
		switch {
		case !readOnly:
			mode = lock.Exclusive
		case o.stable:
			mode = lock.Stable
		}
		held, err = lock.Acquire(path, mode)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open raw image %q: %w", path, err)
	}
	ss := int64(o.sectorSize)
	return &Layer{
		path:       path,
		sectorSize: o.sectorSize,
		size:       (fileSize + ss - 1) / ss * ss,
		readOnly:   readOnly,
		unsynced:   o.unsynced,
		held:       held,
		file:       f,
	}, nil
}

// Create makes a new sparse raw image of size bytes at path, open for
// reading and writing. It refuses to replace an existing file.
func Create(path string, size int64, opts ...Option) (*Layer, error) {
	o, err := collect(opts)
	if err != nil {
		return nil, fmt.Errorf("create raw image %q: %w", path, err)
	}
	if size < 0 || size%int64(o.sectorSize) != 0 {
		return nil, fmt.Errorf("create raw image %q: size %d is not a non-negative multiple of the %d-byte sector: %w",
			path, size, o.sectorSize, disklayer.ErrInvalid)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create raw image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create raw image %q of %d bytes: %w", path, size, err)
	}
	held, err := lock.Acquire(path, lock.Exclusive)
	if err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create raw image %q: %w", path, err)
	}
	return &Layer{path: path, sectorSize: o.sectorSize, size: size, file: f, held: held, unsynced: o.unsynced}, nil
}

// Path is the file the layer was opened from.
func (l *Layer) Path() string { return l.path }

// ReadOnly reports whether the layer was opened read-only.
func (l *Layer) ReadOnly() bool { return l.readOnly }

// Size is the file size rounded up to the sector size.
func (l *Layer) Size() int64 { return l.size }

// SectorSize is the sector size the layer was opened with.
func (l *Layer) SectorSize() int { return l.sectorSize }

// ReadAt reads the image; bytes past the end of the file read as zeros.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if err := l.check("read", off, int64(len(p)), false); err != nil {
		return 0, err
	}
	n, err := l.file.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		// The partial sector at the end of the file (or a file that
		// shrank under us) reads as zeros.
		clear(p[n:])
		return len(p), nil
	}
	if err != nil {
		return n, fmt.Errorf("read raw image %q at %d: %w", l.path, off, err)
	}
	return n, nil
}

// WriteAt writes p at off.
func (l *Layer) WriteAt(p []byte, off int64) (int, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if err := l.check("write", off, int64(len(p)), true); err != nil {
		return 0, err
	}
	n, err := l.file.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write raw image %q at %d: %w", l.path, off, err)
	}
	return n, nil
}

// Zero makes [off, off+length) read as zeros, punching holes where it can.
func (l *Layer) Zero(off, length int64) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if err := l.check("zero", off, length, true); err != nil {
		return err
	}
	ss := int64(l.sectorSize)
	end := off + length
	holeStart, holeEnd := (off+ss-1)/ss*ss, end/ss*ss
	if holeStart >= holeEnd {
		return l.writeZeros(off, end)
	}
	if err := l.writeZeros(off, holeStart); err != nil {
		return err
	}
	if err := l.writeZeros(holeEnd, end); err != nil {
		return err
	}
	err := punchHole(l.file, holeStart, holeEnd-holeStart)
	if errors.Is(err, errors.ErrUnsupported) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return l.writeZeros(holeStart, holeEnd)
	}
	if err != nil {
		return fmt.Errorf("zero raw image %q at %d length %d: punch hole: %w", l.path, off, length, err)
	}
	return nil
}

// zeroBuf is the source of zero writes.
var zeroBuf [1 << 16]byte

// writeZeros writes zeros over [from, to); the caller holds mu.
func (l *Layer) writeZeros(from, to int64) error {
	for at := from; at < to; {
		n, err := l.file.WriteAt(zeroBuf[:min(int64(len(zeroBuf)), to-at)], at)
		if err != nil {
			return fmt.Errorf("zero raw image %q at %d: %w", l.path, at, err)
		}
		at += int64(n)
	}
	return nil
}

// Flush fsyncs a writable image (unless it was made Unsynced); a read-only
// one has nothing to flush.
func (l *Layer) Flush() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return fmt.Errorf("flush raw image %q: %w", l.path, disklayer.ErrClosed)
	}
	if l.readOnly || l.unsynced {
		return nil
	}
	if err := l.file.Sync(); err != nil {
		return fmt.Errorf("flush raw image %q: %w", l.path, err)
	}
	return nil
}

// Close flushes and closes the file. Later calls return ErrClosed.
func (l *Layer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("close raw image %q: %w", l.path, disklayer.ErrClosed)
	}
	l.closed = true
	var syncErr error
	if !l.readOnly && !l.unsynced {
		syncErr = l.file.Sync()
	}
	if err := errors.Join(syncErr, l.file.Close(), l.held.Release()); err != nil {
		return fmt.Errorf("close raw image %q: %w", l.path, err)
	}
	return nil
}

// check validates an operation; the caller holds mu.
func (l *Layer) check(op string, off, length int64, writes bool) error {
	if l.closed {
		return fmt.Errorf("%s raw image %q: %w", op, l.path, disklayer.ErrClosed)
	}
	if writes && l.readOnly {
		return fmt.Errorf("%s raw image %q: %w", op, l.path, disklayer.ErrReadOnly)
	}
	if err := disklayer.CheckRange(off, length, l.size); err != nil {
		return fmt.Errorf("%s raw image %q: %w", op, l.path, err)
	}
	return nil
}

// Extents yields holes as Absent and the rest as Data. It asks the file
// one data-or-hole run at a time, holding the lock only while asking, so
// the loop body may call back into the layer.
func (l *Layer) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	return func(yield func(disklayer.Extent, error) bool) {
		l.mu.RLock()
		err := l.check("extents", off, length, false)
		l.mu.RUnlock()
		if err != nil {
			yield(disklayer.Extent{}, err)
			return
		}
		ss := int64(l.sectorSize)
		end := off + length
		var pending disklayer.Extent // merges runs that rounding joined
		emit := func(from, to int64, kind disklayer.ExtentKind) bool {
			if from >= to {
				return true
			}
			if pending.Len > 0 && pending.Kind == kind {
				pending.Len = to - pending.Off
				return true
			}
			if pending.Len > 0 && !yield(pending, nil) {
				return false
			}
			pending = disklayer.Extent{Off: from, Len: to - from, Kind: kind}
			return true
		}
		for pos := off; pos < end; {
			dataStart, dataEnd, err := l.nextData(pos, end)
			if err != nil {
				yield(disklayer.Extent{}, err)
				return
			}
			// Round in favour of data: its start down, its end up, to
			// sector boundaries, within the asked range.
			dataStart = max(pos, dataStart/ss*ss)
			dataEnd = min(end, (dataEnd+ss-1)/ss*ss)
			if !emit(pos, dataStart, disklayer.Absent) || !emit(dataStart, dataEnd, disklayer.Data) {
				return
			}
			pos = max(dataEnd, dataStart)
		}
		if pending.Len > 0 {
			yield(pending, nil)
		}
	}
}

// nextData finds the first data run at or after pos: [start, end) with
// start >= pos, both clipped to limit; start == limit when there is none.
func (l *Layer) nextData(pos, limit int64) (start, end int64, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, 0, fmt.Errorf("extents raw image %q: %w", l.path, disklayer.ErrClosed)
	}
	start, end, err = dataRun(l.file, pos)
	if err != nil {
		return 0, 0, fmt.Errorf("extents raw image %q at %d: %w", l.path, pos, err)
	}
	return min(start, limit), min(end, limit), nil
}
