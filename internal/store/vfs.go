package store

import (
	"github.com/ncruces/go-sqlite3/vfs"
)

// VFSName is the SQLite VFS every hibdisk connection uses (FileURI names
// it): the operating system's VFS, except that page I/O on the database
// file and the WAL goes through shared memory mappings of the files where
// it can (see fileMap), and appends to the WAL are coalesced.
//
// SQLite writes each WAL frame as two writes, a 24-byte header and the
// page, so a commit of N pages costs 2N pwrite calls. Under fio, pwrite
// was the largest single cost of the NBD write path (about a third of
// the server's CPU for 4 KiB random writes). Writes inside the WAL file
// (it starts over from its beginning after a checkpoint) go through the
// mapping; appends past its end, which a mapping cannot make, are
// gathered in a buffer and written with one call.
//
// Correctness rests on SQLite's own ordering: every other operation on the
// WAL file (read, write through the mapping, sync, truncate, size, lock,
// close) first writes the buffer out, so this connection always reads
// what it wrote; other connections only read frames a commit has
// published in the wal-index, which SQLite does after syncing the WAL
// (synchronous=FULL, which hibdisk uses for every commit), and the sync
// writes the buffer first. What is lost to a crash is what SQLite itself
// would lose: frames not yet synced.
const VFSName = "hibdisk"

const (
	// walBufferBytes bounds the coalescing buffer of one WAL file.
	walBufferBytes = 1 << 20
	// walMapBytes and dbMapBytes are how much of a WAL or database file
	// is mapped (address space only; I/O beyond it uses pread and
	// pwrite).
	walMapBytes = 1 << 30
	dbMapBytes  = 16 << 30
)

func init() {
	vfs.Register(VFSName, mappingVFS{vfs.Find("")})
}

type mappingVFS struct{ vfs.VFS }

func (v mappingVFS) OpenFilename(name *vfs.Filename, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	var f vfs.File
	var out vfs.OpenFlag
	var err error
	if fv, ok := v.VFS.(vfs.VFSFilename); ok {
		f, out, err = fv.OpenFilename(name, flags)
	} else {
		f, out, err = v.VFS.Open(name.String(), flags)
	}
	switch {
	case err != nil:
		return f, out, err
	case flags&vfs.OPEN_WAL != 0:
		return &walFile{osFile: osFile{f}, m: fileMap{limit: walMapBytes, writable: flags&vfs.OPEN_READWRITE != 0}}, out, nil
	case flags&vfs.OPEN_MAIN_DB != 0:
		return &dbFile{osFile: osFile{f}, m: fileMap{limit: dbMapBytes, writable: flags&vfs.OPEN_READWRITE != 0}}, out, nil
	}
	return f, out, nil
}

// walFile buffers contiguous writes to a WAL file and maps it for reads.
type walFile struct {
	osFile
	buf []byte // bytes to write at off
	off int64
	m   fileMap
}

func (w *walFile) WriteAt(p []byte, off int64) (int, error) {
	if w.m.inside(off, len(p)) {
		// Inside the file (the WAL restarted at its beginning): write
		// through the mapping, after what is buffered.
		if err := w.flush(); err != nil {
			return 0, err
		}
		return w.m.writeAt(w.File, p, off)
	}
	if len(w.buf) > 0 && off == w.off+int64(len(w.buf)) && len(w.buf)+len(p) <= walBufferBytes {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.flush(); err != nil {
		return 0, err
	}
	if len(p) >= walBufferBytes {
		n, err := w.File.WriteAt(p, off)
		w.m.wrote(off, n)
		return n, noSpace(err)
	}
	if w.buf == nil {
		w.buf = make([]byte, 0, walBufferBytes)
	}
	w.buf = append(w.buf, p...)
	w.off = off
	return len(p), nil
}

// flush writes the buffer out. A failed write keeps nothing buffered:
// SQLite sees the error on the operation that flushed and treats the WAL
// write as failed, as it would have without the buffer.
func (w *walFile) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	n, err := w.File.WriteAt(w.buf, w.off)
	w.m.wrote(w.off, n)
	w.buf = w.buf[:0]
	return noSpace(err)
}

func (w *walFile) ReadAt(p []byte, off int64) (int, error) {
	if err := w.flush(); err != nil {
		return 0, err
	}
	return w.m.readAt(w.File, p, off)
}

func (w *walFile) Sync(flags vfs.SyncFlag) error {
	if err := w.flush(); err != nil {
		return err
	}
	return w.File.Sync(flags)
}

func (w *walFile) Truncate(size int64) error {
	if err := w.flush(); err != nil {
		return err
	}
	return w.m.truncate(w.File, size)
}

func (w *walFile) Size() (int64, error) {
	if err := w.flush(); err != nil {
		return 0, err
	}
	return w.m.size(w.File)
}

func (w *walFile) Lock(l vfs.LockLevel) error {
	if err := w.flush(); err != nil {
		return err
	}
	return w.File.Lock(l)
}

func (w *walFile) Unlock(l vfs.LockLevel) error {
	if err := w.flush(); err != nil {
		return err
	}
	return w.File.Unlock(l)
}

func (w *walFile) Close() error {
	err := w.flush()
	if merr := w.m.unmap(); err == nil {
		err = merr
	}
	if cerr := w.File.Close(); err == nil {
		err = cerr
	}
	return err
}

// SizeHint forwards SQLITE_FCNTL_SIZE_HINT.
func (w *walFile) SizeHint(size int64) error {
	if h, ok := w.File.(vfs.FileSizeHint); ok {
		if err := w.flush(); err != nil {
			return err
		}
		return h.SizeHint(size)
	}
	return nil
}

// osFile is the operating system's file inside a wrapper: its methods,
// and the file controls every wrapper passes through unchanged.
type osFile struct{ vfs.File }

func (o osFile) Unwrap() vfs.File { return o.File }

// PersistWAL and SetPersistWAL forward SQLITE_FCNTL_PERSIST_WAL.
func (o osFile) PersistWAL() bool {
	if p, ok := o.File.(vfs.FilePersistWAL); ok {
		return p.PersistWAL()
	}
	return false
}

func (o osFile) SetPersistWAL(b bool) {
	if p, ok := o.File.(vfs.FilePersistWAL); ok {
		p.SetPersistWAL(b)
	}
}

// PowersafeOverwrite and SetPowersafeOverwrite forward
// SQLITE_FCNTL_POWERSAFE_OVERWRITE.
func (o osFile) PowersafeOverwrite() bool {
	if p, ok := o.File.(vfs.FilePowersafeOverwrite); ok {
		return p.PowersafeOverwrite()
	}
	return false
}

func (o osFile) SetPowersafeOverwrite(b bool) {
	if p, ok := o.File.(vfs.FilePowersafeOverwrite); ok {
		p.SetPowersafeOverwrite(b)
	}
}
