package store

import (
	"runtime/debug"

	"github.com/ncruces/go-sqlite3/vfs"
	"golang.org/x/sys/unix"
)

// fileMap serves a file's reads (and, for a database file, writes) from a
// shared mapping of the file instead of one pread or pwrite call each.
//
// Under fio's 4 KiB random writes through the NBD server, pread and
// pwrite were half of the server's CPU: the write transaction reads each
// page it changes that is not cached (SQLite's own mmap_size serves only
// read-only transactions), and a checkpoint reads every frame from the
// WAL and writes it to the database file, one call per page.
//
// A MAP_SHARED mapping is the kernel's page cache itself, so it shows
// what pread would, the writes of other connections and processes
// included, and what is written through it is what pwrite would have
// written; Sync's fsync writes it out like any dirty page. Only bytes past
// the end of the file differ: pread reports them missing and pwrite
// extends the file, while the mapping faults (or, in the last partial
// page, reads zeros and drops writes). So the mapping is used only below
// the size this handle knows the file has (its own writes, Size, reads
// that returned data), and a fault (another handle truncated the file)
// is recovered from by falling back to the system call.
type fileMap struct {
	limit    int64 // bytes to map
	writable bool  // map for writing too (the file is open read-write)
	data     []byte
	failed   bool  // mapping is impossible: always use system calls
	known    int64 // the file is at least this long
}

// mapped returns the mapping, creating it on first use, or nil.
func (m *fileMap) mapped(f vfs.File) []byte {
	if m.data != nil || m.failed {
		return m.data
	}
	fd, ok := f.(interface{ Fd() uintptr })
	if !ok {
		m.failed = true
		return nil
	}
	prot := unix.PROT_READ
	if m.writable {
		prot |= unix.PROT_WRITE
	}
	data, err := unix.Mmap(int(fd.Fd()), 0, int(m.limit), prot, unix.MAP_SHARED)
	if err != nil {
		m.failed = true
		return nil
	}
	m.data = data
	return data
}

// inside reports whether [off, off+n) may be served by the mapping.
func (m *fileMap) inside(off int64, n int) bool {
	end := off + int64(n)
	return off >= 0 && end <= m.known && end <= m.limit
}

func (m *fileMap) readAt(f vfs.File, p []byte, off int64) (int, error) {
	if m.inside(off, len(p)) {
		if data := m.mapped(f); data != nil && copyFaultable(p, data[off:]) {
			return len(p), nil
		}
	}
	n, err := f.ReadAt(p, off)
	m.known = max(m.known, off+int64(n))
	return n, err
}

func (m *fileMap) writeAt(f vfs.File, p []byte, off int64) (int, error) {
	if m.writable && m.inside(off, len(p)) {
		if data := m.mapped(f); data != nil && copyFaultable(data[off:], p) {
			return len(p), nil
		}
	}
	n, err := f.WriteAt(p, off)
	m.wrote(off, n)
	return n, err
}

// wrote records that n bytes were written at off.
func (m *fileMap) wrote(off int64, n int) { m.known = max(m.known, off+int64(n)) }

func (m *fileMap) truncate(f vfs.File, size int64) error {
	m.known = min(m.known, size)
	err := f.Truncate(size)
	if err == nil {
		m.known = size
	}
	return err
}

func (m *fileMap) size(f vfs.File) (int64, error) {
	size, err := f.Size()
	if err == nil {
		m.known = size
	}
	return size, err
}

func (m *fileMap) unmap() error {
	if m.data == nil {
		return nil
	}
	err := unix.Munmap(m.data)
	m.data = nil
	return err
}

// copyFaultable copies src to dst, one of which is part of a file
// mapping. It reports false if the copy faulted (the file is shorter than
// the mapping); dst may then be partly written.
func copyFaultable(dst, src []byte) (ok bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	copy(dst, src)
	return true
}

// dbFile is a main database file whose reads and writes go through a
// fileMap. Every other operation, and every optional ability of the
// operating system's file (shared memory for the WAL index, SQLite's own
// memory mapping, lock state), is the wrapped file's.
type dbFile struct {
	osFile
	m fileMap
}

func (d *dbFile) ReadAt(p []byte, off int64) (int, error)  { return d.m.readAt(d.File, p, off) }
func (d *dbFile) WriteAt(p []byte, off int64) (int, error) { return d.m.writeAt(d.File, p, off) }
func (d *dbFile) Truncate(size int64) error                { return d.m.truncate(d.File, size) }
func (d *dbFile) Size() (int64, error)                     { return d.m.size(d.File) }

func (d *dbFile) Close() error {
	err := d.m.unmap()
	if cerr := d.File.Close(); err == nil {
		err = cerr
	}
	return err
}

// SizeHint forwards SQLITE_FCNTL_SIZE_HINT, which extends the file.
func (d *dbFile) SizeHint(size int64) error {
	h, ok := d.File.(vfs.FileSizeHint)
	if !ok {
		return nil
	}
	err := h.SizeHint(size)
	if err == nil {
		d.m.known = max(d.m.known, size)
	}
	return err
}

// SharedMemory forwards the WAL index's shared memory.
func (d *dbFile) SharedMemory() vfs.SharedMemory {
	if f, ok := d.File.(vfs.FileSharedMemory); ok {
		return f.SharedMemory()
	}
	return nil
}

// MemoryMapper forwards SQLite's own memory mapping (mmap_size).
func (d *dbFile) MemoryMapper() vfs.MemoryMapper {
	if f, ok := d.File.(vfs.FileMemoryMapper); ok {
		return f.MemoryMapper()
	}
	return nil
}

// LockState forwards SQLITE_FCNTL_LOCKSTATE.
func (d *dbFile) LockState() vfs.LockLevel {
	if f, ok := d.File.(vfs.FileLockState); ok {
		return f.LockState()
	}
	return vfs.LOCK_NONE
}

// HasMoved forwards SQLITE_FCNTL_HAS_MOVED.
func (d *dbFile) HasMoved() (bool, error) {
	if f, ok := d.File.(vfs.FileHasMoved); ok {
		return f.HasMoved()
	}
	return false, nil
}
