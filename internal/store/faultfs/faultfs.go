// Package faultfs is a fault-injecting filesystem for power-loss tests,
// in the spirit of pebble's errorfs and MemFS.CrashClone. An FS is an
// SQLite VFS (ncruces/go-sqlite3/vfs) over the operating system's that
// store.UseBaseVFS puts beneath hibdisk's own VFS, so that the mappings
// and the WAL coalescing of internal/store are what is tested.
//
// The files are real files (hibdisk maps them, reads their headers and
// locks them with plain system calls); the FS keeps, beside them, what a
// disk would hold after a power loss: each file's content as of its last
// completed Sync. Sync reads the whole file back, so writes made through
// a shared mapping (which never pass through WriteAt) count too.
//
// # The crash model
//
// When power is lost (Plan.LosePowerAt, or LosePower), every file's
// after-crash content is decided at once, and every later operation fails:
//
//   - Data a completed Sync covered survives.
//   - Each 4 KiB page written since (by WriteAt or through a mapping)
//     independently reached the disk or did not: the page cache writes
//     pages back in no particular order. Per loss, either none did, all
//     did (kill -9), or each with probability 1/2.
//   - One of those pages may be torn: some of its 512-byte sectors new,
//     the rest old. The write in flight at the moment of the loss may
//     be torn too: a prefix of it, ending on a 512-byte boundary, lands.
//     Bytes a write did not cover never change (SQLite relies on this
//     "powersafe overwrite", which the OS VFS declares).
//   - A file's size is its size at the last Sync, or (when pages past it
//     reached the disk) its current size, the missing pages reading zero.
//   - A file created through the FS keeps its directory entry only once
//     its directory was synced (SyncDir, or Delete with syncDir); before
//     that it may vanish. An unsynced Delete may be undone: the file
//     comes back with its synced content.
//   - The -shm file (SQLite's WAL index, rebuilt after a crash) is lost.
//
// Not modelled: a file deleted and created again under the same name in
// one session (the old directory entry may come back with the new
// content); metadata other than sizes and directory entries; and the
// Linux "fsyncgate" behaviour of marking dirty pages clean after a failed
// writeback, since a page SQLite rewrites with the same bytes through a
// mapping cannot be told from one it never rewrote. An injected EIO or
// ENOSPC is transient: the operation fails (an ENOSPC write after a
// sector-aligned prefix of it), pages stay dirty, and later operations
// work.
package faultfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/vfs"
)

const (
	pageBytes   = 4096 // page cache granularity: pages reach the disk whole or not at all
	sectorBytes = 512  // a torn page or write is cut at a sector boundary
)

// Fault is an error an operation can be made to fail with.
type Fault int

const (
	NoFault Fault = iota
	// EIO fails the first write or sync at or after Plan.FailAt.
	EIO
	// ENOSPC fails the first write at or after Plan.FailAt, after a
	// sector-aligned prefix of it was written.
	ENOSPC
)

func (f Fault) String() string {
	switch f {
	case EIO:
		return "EIO"
	case ENOSPC:
		return "ENOSPC"
	}
	return "none"
}

// Plan says which operation power is lost at or fails. Operations are
// the writes, syncs, truncations, deletions and directory syncs through
// the FS, counted from 1 in the order they happen.
type Plan struct {
	LosePowerAt int64 // power is lost just before this operation; 0: never
	FailAt      int64 // 0: no injected error
	Fail        Fault
}

// Counts are what an FS did, for the test's log.
type Counts struct {
	Ops         int64 // operations counted (see Plan)
	PowerLosses int
	TornWrites  int // writes in flight at a loss of which a strict prefix landed
	TornPages   int // dirty pages that reached the disk only in part
	DroppedPage int // dirty pages that did not reach the disk
	Vanished    int // files whose creation or deletion a loss undid
	EIO         int
	ENOSPC      int
	// Files counts syncs and truncations by file name (without its
	// directory).
	Files map[string]FileCounts
}

// FileCounts are what an FS did to one file.
type FileCounts struct {
	Syncs     int
	Truncates int
	// Overwrites counts the syncs that made durable a change to bytes
	// that were durable already: a checkpoint writing the database file,
	// a WAL written again from its beginning.
	Overwrites int
}

// Add sums counts.
func (c *Counts) Add(o Counts) {
	c.Ops += o.Ops
	c.PowerLosses += o.PowerLosses
	c.TornWrites += o.TornWrites
	c.TornPages += o.TornPages
	c.DroppedPage += o.DroppedPage
	c.Vanished += o.Vanished
	c.EIO += o.EIO
	c.ENOSPC += o.ENOSPC
	for name, fc := range o.Files {
		if c.Files == nil {
			c.Files = map[string]FileCounts{}
		}
		sum := c.Files[name]
		sum.Syncs += fc.Syncs
		sum.Truncates += fc.Truncates
		sum.Overwrites += fc.Overwrites
		c.Files[name] = sum
	}
}

func (c *Counts) file(path string, count func(*FileCounts)) {
	if c.Files == nil {
		c.Files = map[string]FileCounts{}
	}
	fc := c.Files[filepath.Base(path)]
	count(&fc)
	c.Files[filepath.Base(path)] = fc
}

// ErrPowerLost is the system error of every operation after a loss.
var ErrPowerLost = errors.New("faultfs: power lost")

// FS is the fault-injecting VFS. Create it with New.
type FS struct {
	base vfs.VFS
	mu   sync.Mutex
	rng  *rand.Rand
	plan Plan
	// files are the files opened or deleted through the FS, by path.
	files  map[string]*state
	counts Counts
	lost   bool
	// afterLoss is what each file holds after the loss, by path (no
	// entry: the file is gone); set when power is lost.
	afterLoss map[string][]byte
	inFlight  string // path of the write being counted
}

// state is what the FS knows of one path.
type state struct {
	durable []byte // content as of the last completed Sync
	// entry: the directory entry survives a loss (the file existed when
	// first seen, or its directory was synced since it was created).
	entry bool
	live  bool // the file exists now
}

// New returns an FS over the operating system's VFS, whose random
// choices come from seed.
func New(seed uint64, plan Plan) *FS {
	return &FS{
		base:  vfs.Find(""),
		rng:   rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)),
		plan:  plan,
		files: map[string]*state{},
	}
}

// Counts returns what the FS did so far.
func (f *FS) Counts() Counts {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counts
	c.Files = nil
	c.Add(Counts{Files: f.counts.Files})
	return c
}

// PowerLost reports whether power was lost.
func (f *FS) PowerLost() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lost
}

// LosePower loses power now, unless it already was.
func (f *FS) LosePower() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lost {
		return nil
	}
	return f.losePowerLocked(nil, 0)
}

// CrashClone writes into dir, which must exist, what the disk holds after
// the power loss: the files the FS knows as decided then, and every other
// file of their directories as it is now, except -shm files. It loses
// power first if that has not happened.
func (f *FS) CrashClone(dir string) error {
	if err := f.LosePower(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	dirs := map[string]bool{}
	for path := range f.files {
		dirs[filepath.Dir(path)] = true
	}
	for src := range dirs {
		entries, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range entries {
			path := filepath.Join(src, e.Name())
			if _, known := f.files[path]; known || strings.HasSuffix(e.Name(), "-shm") || !e.Type().IsRegular() {
				continue
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
				return err
			}
		}
	}
	for path, data := range f.afterLoss {
		if strings.HasSuffix(path, "-shm") {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(path)), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// SyncDir syncs a directory: the creations and deletions of files in it
// become durable. hibdisk's VFS calls it instead of fsyncing the
// directory itself (see store.UseBaseVFS).
func (f *FS) SyncDir(dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.countLocked(nil, 0, false, false); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return err
	}
	f.dirSyncedLocked(dir)
	return nil
}

func (f *FS) dirSyncedLocked(dir string) {
	for path, st := range f.files {
		if filepath.Dir(path) != dir {
			continue
		}
		st.entry = st.live
		if !st.live {
			st.durable = nil
		}
	}
}

// countLocked counts an operation and applies the plan to it: it returns
// the error the operation must fail with, if any. p and off are the
// data and offset of a write (nil otherwise).
func (f *FS) countLocked(p []byte, off int64, isWrite, isSync bool) error {
	if f.lost {
		return vfs.SystemError(ErrPowerLost, sqlite3.IOERR)
	}
	f.counts.Ops++
	n := f.counts.Ops
	if f.plan.LosePowerAt != 0 && n >= f.plan.LosePowerAt {
		if err := f.losePowerLocked(p, off); err != nil {
			return err
		}
		return vfs.SystemError(ErrPowerLost, sqlite3.IOERR)
	}
	if f.plan.FailAt == 0 || n < f.plan.FailAt {
		return nil
	}
	switch {
	case f.plan.Fail == EIO && isWrite:
		f.plan.FailAt, f.counts.EIO = 0, f.counts.EIO+1
		return vfs.SystemError(syscall.EIO, sqlite3.IOERR_WRITE)
	case f.plan.Fail == EIO && isSync:
		f.plan.FailAt, f.counts.EIO = 0, f.counts.EIO+1
		return vfs.SystemError(syscall.EIO, sqlite3.IOERR_FSYNC)
	case f.plan.Fail == ENOSPC && isWrite:
		f.plan.FailAt, f.counts.ENOSPC = 0, f.counts.ENOSPC+1
		return errNoSpace
	}
	return nil
}

var errNoSpace = vfs.SystemError(syscall.ENOSPC, sqlite3.FULL)

// losePowerLocked decides what every file holds after the loss. p and off
// are the write in flight, if any.
func (f *FS) losePowerLocked(p []byte, off int64) error {
	f.lost = true
	f.counts.PowerLosses++
	// How many of the pages written since the last sync reach the disk.
	keep := []float64{0, 0.5, 1}[f.rng.IntN(3)]
	tear := f.rng.IntN(2) == 0
	f.afterLoss = map[string][]byte{}
	for path, st := range f.files {
		switch {
		case !st.live && st.entry && f.rng.Float64() >= keep:
			f.afterLoss[path] = st.durable // the deletion did not reach the disk
			f.counts.Vanished++
		case !st.live:
		case !st.entry && f.rng.Float64() >= keep:
			f.counts.Vanished++ // the creation did not reach the disk
		default:
			cur, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("faultfs: read %s at the power loss: %w", path, err)
			}
			f.afterLoss[path] = f.mix(st.durable, cur, keep, tear)
		}
	}
	if p != nil && f.inFlight != "" {
		if img, ok := f.afterLoss[f.inFlight]; ok {
			f.afterLoss[f.inFlight] = f.tearWrite(img, p, off)
		}
	}
	return nil
}

// mix returns what a file holds after a loss: durable, with each page
// that differs in cur taken from cur with probability keep, and (if tear)
// one of them torn.
func (f *FS) mix(durable, cur []byte, keep float64, tear bool) []byte {
	size := len(durable)
	if len(cur) != size && f.rng.Float64() < keep {
		size = len(cur)
	}
	img := make([]byte, size)
	copy(img, durable)
	var dirty []int
	for start := 0; start < size; start += pageBytes {
		end := min(start+pageBytes, size)
		now := make([]byte, end-start)
		if start < len(cur) {
			copy(now, cur[start:min(end, len(cur))])
		}
		if bytes.Equal(img[start:end], now) {
			continue
		}
		dirty = append(dirty, start)
		if f.rng.Float64() < keep {
			copy(img[start:end], now)
		} else {
			f.counts.DroppedPage++
		}
	}
	if tear && len(dirty) > 0 {
		start := dirty[f.rng.IntN(len(dirty))]
		for s := start; s < min(start+pageBytes, size); s += sectorBytes {
			e := min(s+sectorBytes, size)
			var from []byte
			if f.rng.IntN(2) == 0 {
				from = durable
			} else {
				from = cur
			}
			clear(img[s:e])
			if s < len(from) {
				copy(img[s:e], from[s:min(e, len(from))])
			}
		}
		f.counts.TornPages++
	}
	return img
}

// tearWrite lands a prefix of the write p at off on img, cut at a sector
// boundary.
func (f *FS) tearWrite(img, p []byte, off int64) []byte {
	end := off + int64(len(p))
	var cuts []int64
	for c := (off/sectorBytes + 1) * sectorBytes; c < end; c += sectorBytes {
		cuts = append(cuts, c)
	}
	cut := off // nothing landed
	if len(cuts) > 0 && f.rng.IntN(4) != 0 {
		cut = cuts[f.rng.IntN(len(cuts))]
		f.counts.TornWrites++
	}
	if cut > int64(len(img)) {
		img = append(img, make([]byte, cut-int64(len(img)))...)
	}
	copy(img[off:cut], p)
	return img
}

// OpenFilename opens a file through the OS VFS and tracks it.
func (f *FS) OpenFilename(name *vfs.Filename, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	open := func() (vfs.File, vfs.OpenFlag, error) {
		if fv, ok := f.base.(vfs.VFSFilename); ok {
			return fv.OpenFilename(name, flags)
		}
		return f.base.Open(name.String(), flags)
	}
	if name == nil || name.String() == "" {
		return open() // a temporary file: nothing survives a crash anyway
	}
	path := name.String()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lost {
		return nil, flags, vfs.SystemError(ErrPowerLost, sqlite3.CANTOPEN)
	}
	st := f.files[path]
	if st == nil || !st.live {
		data, err := os.ReadFile(path)
		switch {
		case err == nil && st == nil:
			// Seen for the first time: what exists now is taken as durable.
			st = &state{durable: data, entry: true, live: true}
		case errors.Is(err, fs.ErrNotExist) && st == nil:
			st = &state{}
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, flags, err
		}
	}
	file, out, err := open()
	if err != nil {
		return file, out, err
	}
	st.live = true
	f.files[path] = st
	return &File{File: file, fs: f, path: path, st: st}, out, nil
}

// Open implements vfs.VFS; SQLite calls OpenFilename instead.
func (f *FS) Open(name string, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	return f.base.Open(name, flags)
}

// Delete deletes a file; with syncDir its directory is synced after.
func (f *FS) Delete(name string, syncDir bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.countLocked(nil, 0, false, syncDir); err != nil {
		return err
	}
	err := f.base.Delete(name, syncDir)
	if st := f.files[name]; st != nil && err == nil {
		st.live = false
	}
	if err == nil && syncDir {
		f.dirSyncedLocked(filepath.Dir(name))
	}
	return err
}

// Access implements vfs.VFS.
func (f *FS) Access(name string, flags vfs.AccessFlag) (bool, error) {
	return f.base.Access(name, flags)
}

// FullPathname implements vfs.VFS.
func (f *FS) FullPathname(name string) (string, error) { return f.base.FullPathname(name) }

// File is a file of an FS: the OS VFS's file, with its writes, syncs and
// truncations counted and subject to the plan.
type File struct {
	vfs.File
	fs   *FS
	path string
	st   *state
}

// WriteAt writes p, unless the plan fails it.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	fs := f.fs
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.inFlight = f.path
	err := fs.countLocked(p, off, true, false)
	fs.inFlight = ""
	if err == errNoSpace {
		n := int(min(int64(len(p)), (off+int64(fs.rng.IntN(len(p)+1)))/sectorBytes*sectorBytes-off))
		if n > 0 {
			if m, werr := f.File.WriteAt(p[:n], off); werr != nil {
				return m, werr
			}
			return n, err
		}
		return 0, err
	}
	if err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

// Sync syncs the file and records its content as durable.
func (f *File) Sync(flags vfs.SyncFlag) error {
	fs := f.fs
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.countLocked(nil, 0, false, true); err != nil {
		return err
	}
	if err := f.File.Sync(flags); err != nil {
		return err
	}
	size, err := f.File.Size()
	if err != nil {
		return err
	}
	data := make([]byte, size)
	if n, err := f.File.ReadAt(data, 0); err != nil && !(errors.Is(err, io.EOF) && int64(n) == size) {
		return fmt.Errorf("faultfs: read back %s: %w", f.path, err)
	}
	old := f.st.durable[:min(len(f.st.durable), len(data))]
	overwrite := !bytes.Equal(old, data[:len(old)])
	fs.counts.file(f.path, func(c *FileCounts) {
		c.Syncs++
		if overwrite {
			c.Overwrites++
		}
	})
	f.st.durable = data
	return nil
}

// Truncate truncates the file, unless the plan fails it.
func (f *File) Truncate(size int64) error {
	fs := f.fs
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.countLocked(nil, 0, false, false); err != nil {
		return err
	}
	fs.counts.file(f.path, func(c *FileCounts) { c.Truncates++ })
	return f.File.Truncate(size)
}

// ReadAt reads, until power is lost.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if f.fs.PowerLost() {
		return 0, vfs.SystemError(ErrPowerLost, sqlite3.IOERR_READ)
	}
	return f.File.ReadAt(p, off)
}

// Size returns the size, until power is lost.
func (f *File) Size() (int64, error) {
	if f.fs.PowerLost() {
		return 0, vfs.SystemError(ErrPowerLost, sqlite3.IOERR_FSTAT)
	}
	return f.File.Size()
}

// Lock locks, until power is lost.
func (f *File) Lock(l vfs.LockLevel) error {
	if f.fs.PowerLost() {
		return vfs.SystemError(ErrPowerLost, sqlite3.IOERR_LOCK)
	}
	return f.File.Lock(l)
}

// Fd is the descriptor hibdisk's VFS maps.
func (f *File) Fd() uintptr { return f.File.(interface{ Fd() uintptr }).Fd() }

// SharedMemory forwards the WAL index's shared memory.
func (f *File) SharedMemory() vfs.SharedMemory {
	if s, ok := f.File.(vfs.FileSharedMemory); ok {
		return s.SharedMemory()
	}
	return nil
}

// LockState forwards SQLITE_FCNTL_LOCKSTATE.
func (f *File) LockState() vfs.LockLevel {
	if s, ok := f.File.(vfs.FileLockState); ok {
		return s.LockState()
	}
	return vfs.LOCK_NONE
}

// HasMoved forwards SQLITE_FCNTL_HAS_MOVED.
func (f *File) HasMoved() (bool, error) {
	if s, ok := f.File.(vfs.FileHasMoved); ok {
		return s.HasMoved()
	}
	return false, nil
}

// SizeHint forwards SQLITE_FCNTL_SIZE_HINT, a write of sorts.
func (f *File) SizeHint(size int64) error {
	s, ok := f.File.(vfs.FileSizeHint)
	if !ok {
		return nil
	}
	fs := f.fs
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.countLocked(nil, 0, false, false); err != nil {
		return err
	}
	return s.SizeHint(size)
}

// PersistWAL and SetPersistWAL forward SQLITE_FCNTL_PERSIST_WAL.
func (f *File) PersistWAL() bool {
	if s, ok := f.File.(vfs.FilePersistWAL); ok {
		return s.PersistWAL()
	}
	return false
}

func (f *File) SetPersistWAL(b bool) {
	if s, ok := f.File.(vfs.FilePersistWAL); ok {
		s.SetPersistWAL(b)
	}
}

// PowersafeOverwrite and SetPowersafeOverwrite forward
// SQLITE_FCNTL_POWERSAFE_OVERWRITE.
func (f *File) PowersafeOverwrite() bool {
	if s, ok := f.File.(vfs.FilePowersafeOverwrite); ok {
		return s.PowersafeOverwrite()
	}
	return false
}

func (f *File) SetPowersafeOverwrite(b bool) {
	if s, ok := f.File.(vfs.FilePowersafeOverwrite); ok {
		s.SetPowersafeOverwrite(b)
	}
}
