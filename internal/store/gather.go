package store

import (
	"github.com/ncruces/go-sqlite3/vfs"
	"golang.org/x/sys/unix"
)

// gatheredFile is a file read through a mapping (fileMap) whose writes
// that continue each other may be gathered in a buffer and written with
// one pwrite: SQLite writes a WAL frame as two writes and a database
// page as one, and one system call per page was the largest cost of
// writing (see VFSName, dbFile.scratch). Every operation on the file
// other than a write writes the buffer out first, so this handle reads
// what it wrote and a sync covers it. A failed write of the buffer keeps
// nothing buffered: SQLite sees the error on the operation that wrote it
// out, as it would have seen it on the write.
//
// With async (scratch databases only, dbFile.scratch), a full buffer that
// the next write continues is written by a goroutine while the next one
// fills (one in flight): a 16 GiB convert spent 10.6 s of its CPU in
// those pwrites (the kernel copying into new page-cache pages), and they
// now overlap SQLite's own work. Every other operation waits for the
// write in flight first, so the order of writes and what reads see are
// unchanged; its failure is reported by the next operation that waits
// (a scratch file that fails is discarded whole).
type gatheredFile struct {
	osFile
	m   fileMap
	buf []byte // bytes to write at off
	off int64

	async    bool
	inflight chan asyncWrite // the write in flight, or nil
	spare    []byte          // the buffer the last write in flight used
}

// asyncWrite is the outcome of a buffer written by a goroutine.
type asyncWrite struct {
	off int64
	n   int
	err error
	buf []byte
}

// gatherBytes bounds the buffer of one file.
const gatherBytes = 1 << 20

// gather takes p, at off, into the buffer if it continues what is there.
// Otherwise it writes the buffer out, starting the buffer's writeback
// when p continued a full one (a large transaction: its sync then finds
// less to do), and reports false: the caller writes p itself or starts
// a new buffer with it.
func (g *gatheredFile) gather(p []byte, off int64) (bool, error) {
	continues := len(g.buf) > 0 && off == g.off+int64(len(g.buf))
	if continues && len(g.buf)+len(p) <= gatherBytes {
		g.buf = append(g.buf, p...)
		return true, nil
	}
	if continues && g.async {
		return false, g.writeBehind()
	}
	start := g.off
	if err := g.flush(); err != nil {
		return false, err
	}
	if continues {
		startWriteback(g.File, start, off-start)
	}
	return false, nil
}

// writeBehind hands the buffer to a goroutine that writes it out and
// starts its writeback, after the write in flight before it finished;
// the buffer that write used becomes the next one.
func (g *gatheredFile) writeBehind() error {
	if err := g.settle(); err != nil {
		return err
	}
	f, buf, off := g.File, g.buf, g.off
	done := make(chan asyncWrite, 1)
	g.inflight = done
	g.buf, g.spare = g.spare, nil
	go func() {
		n, err := f.WriteAt(buf, off)
		if err == nil {
			startWriteback(f, off, int64(n))
		}
		done <- asyncWrite{off: off, n: n, err: err, buf: buf}
	}()
	return nil
}

// settle waits for the write in flight, if any, and reports its failure.
func (g *gatheredFile) settle() error {
	if g.inflight == nil {
		return nil
	}
	w := <-g.inflight
	g.inflight = nil
	g.m.wrote(w.off, w.n)
	g.spare = w.buf[:0]
	return noSpace(w.err)
}

// writeGathered writes p at off: a new buffer when p is smaller than one,
// else straight to the file.
func (g *gatheredFile) writeGathered(p []byte, off int64) (int, error) {
	if len(p) >= gatherBytes {
		n, err := g.File.WriteAt(p, off)
		g.m.wrote(off, n)
		return n, noSpace(err)
	}
	if g.buf == nil {
		g.buf = make([]byte, 0, gatherBytes)
	}
	g.buf = append(g.buf, p...)
	g.off = off
	return len(p), nil
}

// flush writes the buffer out, after the write in flight.
func (g *gatheredFile) flush() error {
	if err := g.settle(); err != nil {
		return err
	}
	if len(g.buf) == 0 {
		return nil
	}
	n, err := g.File.WriteAt(g.buf, g.off)
	g.m.wrote(g.off, n)
	g.buf = g.buf[:0]
	return noSpace(err)
}

// startWriteback asks the kernel to start writing [off, off+n) of f to
// disk without waiting for it (sync_file_range with
// SYNC_FILE_RANGE_WRITE only). It changes nothing about durability: the
// next sync still waits for every page. A file without a descriptor, or
// a kernel or filesystem that refuses, just skips it.
func startWriteback(f vfs.File, off, n int64) {
	if fd, ok := f.(interface{ Fd() uintptr }); ok {
		unix.SyncFileRange(int(fd.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
	}
}

func (g *gatheredFile) ReadAt(p []byte, off int64) (int, error) {
	if err := g.flush(); err != nil {
		return 0, err
	}
	return g.m.readAt(g.File, p, off)
}

func (g *gatheredFile) Sync(flags vfs.SyncFlag) error {
	if err := g.flush(); err != nil {
		return err
	}
	return g.File.Sync(flags)
}

func (g *gatheredFile) Truncate(size int64) error {
	if err := g.flush(); err != nil {
		return err
	}
	return g.m.truncate(g.File, size)
}

func (g *gatheredFile) Size() (int64, error) {
	if err := g.flush(); err != nil {
		return 0, err
	}
	return g.m.size(g.File)
}

func (g *gatheredFile) Lock(l vfs.LockLevel) error {
	if err := g.flush(); err != nil {
		return err
	}
	return g.File.Lock(l)
}

func (g *gatheredFile) Unlock(l vfs.LockLevel) error {
	if err := g.flush(); err != nil {
		return err
	}
	return g.File.Unlock(l)
}

func (g *gatheredFile) Close() error {
	err := g.flush()
	if merr := g.m.unmap(); err == nil {
		err = merr
	}
	if cerr := g.File.Close(); err == nil {
		err = cerr
	}
	return err
}
