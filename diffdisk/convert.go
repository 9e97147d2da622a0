package diffdisk

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// ConvertOptions describe the output of Convert.
type ConvertOptions struct {
	// Format of the output: disklayer.FormatHibdisk (the default),
	// disklayer.FormatRaw, disklayer.FormatOpenVMM, or one qemu-img
	// writes (QemuImgFormat: qcow2, vmdk, vhdx, vdi, vpc).
	Format string
	// FormatOptions are qemu-img's -o options for a format it writes
	// ("compat=0.10", "subformat=streamOptimized", "cluster_size=2M"),
	// passed through; Compressed is its -c. Neither applies to hibdisk
	// or raw outputs.
	FormatOptions string
	Compressed    bool
	// SectorSize of a hibdisk output; 0 means the largest power of two
	// up to disklayer.DefaultSectorSize that divides the source size.
	// For an openvmm output, 0 means the source's sector size.
	SectorSize int
	// Label of a hibdisk output.
	Label string
	// Cache is how the output is written (qemu-img's -t): "" is
	// CacheWriteback.
	Cache Cache
	// Progress, when set, is called with the bytes of the source done so
	// far and its size, after each chunk; for a format qemu-img writes,
	// whenever qemu-img's own progress (-p) moves, which counts what it
	// has written, holes included, and ends at 100%.
	Progress func(done, total int64)
}

// Cache says how Convert writes its output, in the words of qemu-img's
// -t (QEMU's cache modes); ParseCache takes those words.
type Cache string

const (
	// CacheWriteback writes through the page cache, starts the
	// kernel's writeback of each piece as soon as it is written (so the
	// device works while the copy goes on), and syncs the output and
	// its directory before Convert returns: hibdisk's default.
	CacheWriteback Cache = "writeback"
	// CacheNone writes a hibdisk output with O_DIRECT where the
	// filesystem takes it (through the page cache otherwise), and syncs
	// as CacheWriteback does.
	CacheNone Cache = "none"
	// CacheUnsafe writes through the page cache and never syncs:
	// Convert returns once the kernel has the output, and a crash or
	// power loss before the kernel writes it back may leave DST
	// incomplete. qemu-img convert's default; for outputs that a failed
	// run makes again.
	CacheUnsafe Cache = "unsafe"
)

// ParseCache reads a cache mode as qemu-img's -t names it ("" is
// CacheWriteback). writethrough and directsync are accepted as
// writeback and none: the output is private until Convert publishes it,
// so syncing every write instead of the whole output once changes
// nothing anyone can see.
func ParseCache(s string) (Cache, error) {
	switch s {
	case "", "writeback", "writethrough":
		return CacheWriteback, nil
	case "none", "directsync":
		return CacheNone, nil
	case "unsafe":
		return CacheUnsafe, nil
	}
	return "", fmt.Errorf("cache mode %q: want writeback (the default), none, unsafe, writethrough or directsync: %w", s, disklayer.ErrInvalid)
}

// synced says whether outputs written this way are synced.
func (c Cache) synced() bool { return c != CacheUnsafe }

// Convert copies the whole view of src into a new standalone image at dst
// (`hibdisk convert`), keeping it sparse: ranges src reports as Absent or
// Zero are not read, and all-zero sectors inside data ranges are not
// stored (no row in a hibdisk output, a hole in a raw one). dst must not
// exist. The copy is written under a temporary name beside dst
// (".NAME.partial-RANDOM"), flushed and closed (synced, unless
// opts.Cache is CacheUnsafe), and only then linked into place, so a
// killed run never leaves a partial image at dst; on failure
// the temporary file is removed. A format qemu-img writes is written by
// qemu-img reading src over NBD (see convertQemu), the same way.
func Convert(src disklayer.Layer, dst string, opts ConvertOptions) (err error) {
	if _, err := os.Lstat(dst); err == nil {
		return &fs.PathError{Op: "convert to", Path: dst, Err: fs.ErrExist}
	}
	if err := checkQemuImgOptions(opts); err != nil {
		return fmt.Errorf("convert to %q: %w", dst, err)
	}
	if _, err := ParseCache(string(opts.Cache)); err != nil {
		return fmt.Errorf("convert to %q: %w", dst, err)
	}
	tmp, err := partialName(dst)
	if err != nil {
		return fmt.Errorf("convert to %q: %w", dst, err)
	}
	defer func() {
		if err != nil {
			RemoveLayerFiles(tmp)
		}
	}()
	if QemuImgFormat(opts.Format) {
		err = convertQemu(src, tmp, dst, opts)
	} else {
		err = convertNative(src, tmp, opts)
	}
	if err == nil {
		err = publish(tmp, dst, opts.Cache.synced())
	}
	if err != nil {
		return fmt.Errorf("convert to %q: %w", dst, err)
	}
	return nil
}

// convertNative writes src's view into a new hibdisk or raw image at tmp.
func convertNative(src disklayer.Layer, tmp string, opts ConvertOptions) error {
	out, err := createOutput(src, tmp, opts)
	if err != nil {
		return err
	}
	err = copyView(out, src, opts.Progress)
	if cerr := out.Close(); err == nil {
		err = cerr // a hibdisk output's Close folds its WAL into the file
	}
	return err
}

// partialName is a fresh temporary name beside path.
func partialName(path string) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".partial-"+hex.EncodeToString(b[:])), nil
}

// publish moves the complete, closed image at tmp to path, refusing an
// existing path (a link cannot replace one), and makes the directory
// entry durable if synced is set. A closed hibdisk layer has no -wal
// left to carry along.
func publish(tmp, path string, synced bool) error {
	if _, err := os.Stat(tmp + "-wal"); err == nil {
		return fmt.Errorf("%s-wal is still there after close: the copy is not folded into one file", tmp)
	}
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	if err := os.Remove(tmp); err != nil {
		return err
	}
	if !synced {
		return nil
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// convertOutput is what copyView writes: a new image, written in order.
type convertOutput interface {
	io.WriterAt
	SectorSize() int
	Flush() error
	Close() error
}

func createOutput(src disklayer.Layer, dst string, opts ConvertOptions) (convertOutput, error) {
	size := src.Size()
	switch opts.Format {
	case "", disklayer.FormatHibdisk:
		ss := opts.SectorSize
		if ss == 0 {
			ss = rawDiffSectorSize(size)
		}
		if size%int64(ss) != 0 {
			return nil, fmt.Errorf("source size %d is not a multiple of sector size %d: %w", size, ss, disklayer.ErrInvalid)
		}
		// Nobody sees the output before it is published, and its rows
		// arrive in order: Bulk lays out the sectors table's pages
		// itself, writing each once, and Close syncs them.
		how := sqlitelayer.BulkOptions{Direct: opts.Cache == CacheNone, Unsynced: !opts.Cache.synced()}
		return sqlitelayer.CreateBulk(dst, sqlitelayer.CreateOptions{Size: size, SectorSize: ss, Label: opts.Label}, how)
	case disklayer.FormatRaw:
		if !opts.Cache.synced() {
			return rawlayer.Create(dst, size, rawlayer.Unsynced())
		}
		return rawlayer.Create(dst, size)
	case disklayer.FormatOpenVMM:
		return createOpenVMMOutput(src, dst, opts.SectorSize)
	}
	return nil, fmt.Errorf("output format %q (want %s or %s): %w", opts.Format, disklayer.FormatHibdisk, disklayer.FormatRaw, disklayer.ErrInvalid)
}

// copyView writes every non-zero sector-aligned run of src's view into
// dst, which reads as zeros everywhere to begin with.
//
// Reading and writing overlap: a goroutine reads src up to
// readAheadChunks chunks ahead while this one writes. Serially, a 16 GiB
// convert from a raw image not in the page cache spent 12 s of its 57 s
// waiting for the source, and the writes waited in turn.
func copyView(dst convertOutput, src disklayer.Layer, progress func(done, total int64)) error {
	size := src.Size()
	// Zero detection works on the output's sectors, so a sector that is
	// partly data and partly zero is stored whole.
	unit := int64(dst.SectorSize())
	chunks := make(chan readChunk, readAheadChunks)
	free := make(chan []byte, readAheadChunks+1)
	for range readAheadChunks + 1 {
		free <- make([]byte, convertChunk)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(chunks)
		readView(src, size, chunks, free, stop)
	}()
	defer func() {
		close(stop)
		for range chunks { // let the reader finish
		}
		<-done
	}()
	for c := range chunks {
		if c.err != nil {
			return c.err
		}
		if c.buf != nil {
			if err := writeNonZero(dst, c.buf, c.off, unit); err != nil {
				return err
			}
			free <- c.buf[:cap(c.buf)]
		}
		if progress != nil {
			progress(c.end, size)
		}
	}
	return dst.Flush()
}

// convertChunk is the size of copyView's reads. Small enough that a
// chunk is still in the CPU's cache (2 MiB of L2 a core here) when it is
// copied into pages and they are written: converting 1 GiB of data from
// a cached raw image took a median 0.33 s with 256 KiB reads and writes,
// 0.58 s with 1 MiB, 0.37 s with 128 KiB (more system calls), five
// rounds each (docs/scale-work.md).
const convertChunk = 256 << 10

// readAheadChunks is how many convertChunk buffers copyView reads ahead.
const readAheadChunks = 8

// readChunk is a piece of the source for copyView: data read at off
// (buf), or a range with none (buf nil), ending at end; or the error
// that ended the read.
type readChunk struct {
	off, end int64
	buf      []byte
	err      error
}

// readView reads the data of src's view in order into buffers from free
// and sends them on chunks, until the end, an error (sent too) or stop.
func readView(src disklayer.Layer, size int64, chunks chan<- readChunk, free chan []byte, stop <-chan struct{}) {
	send := func(c readChunk) bool {
		select {
		case chunks <- c:
			return true
		case <-stop:
			return false
		}
	}
	for e, err := range src.Extents(0, size) {
		if err != nil {
			send(readChunk{err: err})
			return
		}
		if e.Kind != disklayer.Data {
			if !send(readChunk{off: e.Off, end: e.End()}) {
				return
			}
			continue
		}
		for off := e.Off; off < e.End(); {
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			n := min(int64(len(buf)), e.End()-off)
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				send(readChunk{err: err})
				return
			}
			if !send(readChunk{off: off, end: off + n, buf: buf[:n]}) {
				return
			}
			off += n
		}
	}
}

// writeNonZero writes the runs of p (at off) that are not all-zero
// units, skipping the zero ones, which dst already reads as zeros.
func writeNonZero(dst io.WriterAt, p []byte, off, unit int64) error {
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := dst.WriteAt(p[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(p); {
		// The first unit may be partial when off is not aligned.
		n := int(unit - (off+int64(i))%unit)
		n = min(n, len(p)-i)
		if firstNonZero(p[i:i+n]) < 0 {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
		i += n
	}
	return flush(len(p))
}

// RemoveLayerFiles deletes a layer this process made and gave up on (a
// partial output, a resume's new top that failed) with its SQLite
// companions, best effort: the error that made it give up is what
// matters.
func RemoveLayerFiles(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		_ = os.Remove(p)
	}
}

// ConvertInto copies the whole view of src into the existing image at dst
// (`hibdisk convert -n`, qemu-img convert -n): a hibdisk layer (written
// through its chain's top) or a raw image. Unlike Convert it writes every
// range, zeros included, since dst holds content of its own; dst must be
// at least as large as src, and what lies past src's end is left alone.
// A format hibdisk does not write in place (qcow2, ...) is refused.
func ConvertInto(src disklayer.Layer, dst string, progress func(done, total int64)) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("convert into %q: %w", dst, err)
		}
	}()
	format, err := ImageFormat(dst)
	if err != nil {
		return err
	}
	var out disklayer.Disk
	switch format {
	case disklayer.FormatHibdisk:
		d, err := Open(dst, Options{})
		if err != nil {
			return err
		}
		out = d
	case disklayer.FormatRaw:
		l, err := rawlayer.Open(dst, false)
		if err != nil {
			return err
		}
		out = l
	default:
		return fmt.Errorf("it is a %s image: hibdisk writes into hibdisk layers and raw images only (for %s: qemu-img convert -n): %w", format, format, disklayer.ErrInvalid)
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	size := src.Size()
	if out.Size() < size {
		return fmt.Errorf("it is %d bytes, smaller than the source's %d: grow it first (hibdisk resize %s %d): %w", out.Size(), size, dst, size, disklayer.ErrOutOfRange)
	}
	buf := make([]byte, copyChunk)
	for e, err := range src.Extents(0, size) {
		if err != nil {
			return err
		}
		if e.Kind != disklayer.Data {
			if err := out.Zero(e.Off, e.Len); err != nil {
				return err
			}
		} else {
			for off := e.Off; off < e.End(); off += copyChunk {
				p := buf[:min(copyChunk, e.End()-off)]
				if _, err := src.ReadAt(p, off); err != nil {
					return err
				}
				if _, err := out.WriteAt(p, off); err != nil {
					return err
				}
			}
		}
		if progress != nil {
			progress(e.End(), size)
		}
	}
	return out.Flush()
}
