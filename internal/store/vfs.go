package store

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/ncruces/go-sqlite3"
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
// the server's CPU for 4 KiB random writes). So contiguous writes are
// gathered in a buffer and written with one call, whether they append
// or overwrite (the WAL starts over from its beginning after a
// checkpoint). Overwrites once went through the mapping instead, but a
// store through a mapping costs a page fault the first time each page is
// touched, and on these machines (virtual, 2 cores) that made a 110 MiB
// hibernate's WAL 124 ms of faults where pwrite of the same bytes over
// cached pages takes 10 ms. A buffer that fills (a large transaction)
// also starts the kernel writing it to disk (sync_file_range), so that
// the commit's fsync finds little left to write.
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
	// walMapBytes and dbMapBytes are how much of a WAL or database file
	// is mapped (address space only; I/O beyond it uses pread and
	// pwrite).
	walMapBytes = 1 << 30
	dbMapBytes  = 16 << 30
)

func init() {
	vfs.Register(VFSName, mappingVFS{vfs.Find("")})
}

// UseBaseVFS makes the databases directly inside dir open through
// hibdisk's VFS over base instead of over the operating system's VFS,
// until restore is called. It is the seam of the power-loss tests: base
// is a fault-injecting filesystem (internal/store/faultfs) beneath the
// mappings and the WAL coalescing, which are what those tests exercise,
// the way every hibdisk connection (Open, Create, FileURI) uses them.
// base's files must expose their descriptor (Fd() uintptr) to be mapped,
// and must be real files in dir, since hibdisk also reads their headers
// and takes its locks with plain system calls. A base that has a
// SyncDir(dir string) error method syncs directories for hibdisk's VFS.
//
// The crash model (faultfs): a power loss keeps what each file held at
// its last completed Sync, plus any subset of the 4 KiB pages written
// since (through WriteAt or a mapping, which Sync sees by reading the
// file back), one possibly torn at a 512-byte boundary; files created
// since their directory was last synced may vanish; the -shm file is
// lost. EIO and ENOSPC can be injected at a chosen write or sync.
//
// It costs a production open one atomic load (in FileURI); nothing else.
func UseBaseVFS(dir string, base vfs.VFS) (restore func(), err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	baseVFSMu.Lock()
	defer baseVFSMu.Unlock()
	old := map[string]string{}
	if m := baseVFSByDir.Load(); m != nil {
		old = *m
	}
	if _, ok := old[abs]; ok {
		return nil, fmt.Errorf("%s already has a base VFS", abs)
	}
	baseVFSCount++
	name := fmt.Sprintf("%s-base-%d", VFSName, baseVFSCount)
	vfs.Register(name, mappingVFS{base})
	routes := map[string]string{abs: name}
	for d, n := range old {
		routes[d] = n
	}
	baseVFSByDir.Store(&routes)
	return func() {
		baseVFSMu.Lock()
		defer baseVFSMu.Unlock()
		routes := map[string]string{}
		for d, n := range *baseVFSByDir.Load() {
			if d != abs {
				routes[d] = n
			}
		}
		baseVFSByDir.Store(&routes)
		vfs.Unregister(name)
	}, nil
}

var (
	baseVFSMu    sync.Mutex
	baseVFSCount int
	// baseVFSByDir maps a directory to the VFS name its databases open
	// through (UseBaseVFS); nil in production.
	baseVFSByDir atomic.Pointer[map[string]string]
)

// vfsFor returns the VFS name for the database at the absolute path abs.
func vfsFor(abs string) string {
	if m := baseVFSByDir.Load(); m != nil {
		if name, ok := (*m)[filepath.Dir(abs)]; ok {
			return name
		}
	}
	return VFSName
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
		w := &walFile{gatheredFile: gatheredFile{osFile: osFile{f}, m: fileMap{limit: walMapBytes, writable: flags&vfs.OPEN_READWRITE != 0}}}
		if flags&vfs.OPEN_CREATE != 0 {
			w.syncDir = v.dirSyncer(filepath.Dir(name.String()))
		}
		return w, out, nil
	case flags&vfs.OPEN_MAIN_DB != 0:
		scratch := name.URIParameter(scratchParam) == "1"
		writable := flags&vfs.OPEN_READWRITE != 0
		stable := !writable && name.URIParameter(stableParam) == "1"
		return &dbFile{gatheredFile: gatheredFile{osFile: osFile{f}, m: fileMap{limit: dbMapBytes, writable: writable, stable: stable}, async: scratch},
			scratch: scratch}, out, nil
	}
	return f, out, nil
}

// dirSyncer returns the function that syncs dir after a new WAL's first
// sync: the base VFS's SyncDir if it has one (a test's fault-injecting
// filesystem, which must see it), else nil: the OS VFS of
// ncruces/go-sqlite3 v0.37.0 syncs the directory itself (v0.35.6 synced
// the file twice instead; TestWALSyncsItsDirectory found it).
func (v mappingVFS) dirSyncer(dir string) func() error {
	if s, ok := v.VFS.(interface{ SyncDir(string) error }); ok {
		return func() error { return s.SyncDir(dir) }
	}
	return nil
}

// walFile gathers contiguous writes to a WAL file and maps it for reads.
type walFile struct {
	gatheredFile
	// syncDir, until it succeeds once, syncs the WAL's directory after
	// the WAL itself, for a base VFS that models directories (see
	// dirSyncer). SQLite asks for that (SQLITE_OPEN_WAL with
	// SQLITE_OPEN_CREATE): a WAL created since the database was opened
	// (as it is whenever the last connection closed cleanly and deleted
	// it) could otherwise vanish in a power loss with every commit in it,
	// and take a half-done checkpoint's consistency with it.
	syncDir func() error
}

func (w *walFile) WriteAt(p []byte, off int64) (int, error) {
	if ok, err := w.gather(p, off); ok || err != nil {
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return w.writeGathered(p, off)
}

func (w *walFile) Sync(flags vfs.SyncFlag) error {
	if err := w.gatheredFile.Sync(flags); err != nil {
		return err
	}
	if w.syncDir != nil {
		if err := w.syncDir(); err != nil {
			return vfs.SystemError(err, sqlite3.IOERR_DIR_FSYNC)
		}
		w.syncDir = nil
	}
	return nil
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
