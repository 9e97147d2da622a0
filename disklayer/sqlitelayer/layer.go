package sqlitelayer

import (
	"crypto/rand"
	"fmt"
	"iter"
	"os"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/lock"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// HibernateSize is the size of every layer's hibernate file (the
// hibernate_blocks table): a sparse address space large enough for any
// guest's RAM.
const HibernateSize int64 = 1 << 46

// SchemaVersion is the layer schema this build writes (user_version);
// package internal/schema names the versions and holds their history.
const SchemaVersion = schema.Current

// Info is the layer row.
type Info struct {
	UUID       string
	SectorSize int
	DiskSize   int64
	Parent     *disklayer.ParentRef // nil for a base layer
	ReadOnly   bool                 // the read_only column: the layer refuses writes
	CreatedAt  time.Time
	Label      string
	// Generation counts the committed transactions that changed the
	// layer's content (generation.go); 0 for a layer older than
	// schema version 5 opened read-only.
	Generation int64
	// ReadCache is the read_cache flag (schema version 6): serve the
	// layer as a read cache of the layers below it.
	ReadCache bool
	// Sealed: the layer was sealed (Seal): marked read-only and out of
	// WAL mode, so its file's bytes never change and its SHA-256 is its
	// identity. Nothing may open it writable.
	Sealed bool
}

// CreateOptions describe a new layer.
type CreateOptions struct {
	Size       int64                // bytes the guest sees; a multiple of SectorSize
	SectorSize int                  // 0 means DefaultSectorSize
	Parent     *disklayer.ParentRef // nil for a base layer
	Label      string
	ReadCache  bool // Info.ReadCache
	// Scratch makes a layer that nobody opens before its Close returns
	// (convert's output under a temporary name): its writes skip the
	// journal and the syncs, so each page is written once, straight
	// into the file, instead of into the WAL, synced every batch and
	// copied into the file by checkpoints. Close syncs the file and
	// leaves an ordinary layer. A Scratch layer that fails, or whose
	// process dies, is damaged: its caller must delete it. It is made
	// without live reclaim (reclaim.go): convert's output is a base,
	// written once and then read, and keeping the pointer map up to date
	// cost convert about a tenth more CPU (10 runs, 512 MiB of data);
	// `hibdisk compact` turns it into a layer that reclaims.
	Scratch bool
}

// OpenOptions control Open.
type OpenOptions struct {
	// ReadOnly opens the database read-only: every write, zero and
	// metadata change returns ErrReadOnly.
	ReadOnly bool
	// Strict runs the layer's own consistency checks (see Check) on open
	// and fails with ErrCorrupt on any problem. It reads the whole file.
	Strict bool
	// WriteBack makes whole-sector writes of up to 1 MiB return once
	// their data is copied, and applies them on a goroutine of its own
	// (see writeBack): for servers, whose next request can then be read
	// while SQLite works. Durability is unchanged (Flush applies
	// everything first); a write that fails when applied becomes the
	// layer's sticky failure instead of failing its WriteAt.
	WriteBack bool
	// HoldStable holds a read-only layer so that no other process may
	// write it while it is open (lock.Stable): for the parents of a
	// chain and read-only exports. A read-only open without it tolerates
	// a writer (lock.Shared) and reads SQLite's committed snapshots; a
	// writable open always holds the layer exclusively (lock.Exclusive),
	// and is refused while anyone else writes it or holds it stable.
	HoldStable bool
}

// cacheBytesFor is the page cache of a connection opened read-only or not.
func cacheBytesFor(readOnly bool) int64 {
	if readOnly {
		return readOnlyCacheBytes
	}
	return cacheBytes
}

// pageSizeFor returns the SQLite page size for a new layer with the given
// sector size: 4096 for every sector size.
//
// Measured with BenchmarkLayer -bench.pagesizes=4096,16384,32768,65536
// (bench_test.go) on the 2-core development machine, ext4 on a virtual
// disk, a 256 MiB layer of 4 KiB sectors filled with random data, with
// other jobs sharing the CPUs (±25% between runs):
//
//	page   file bytes/sector  rand 4K read  rand 4K write*  seq 1M read  seq 1M write*
//	 4096     4610 (1.13x)      109k/s          16.6k/s       1633 MB/s     903 MB/s
//	16384     5466 (1.33x)       97k/s          19.5k/s       2441 MB/s    1245 MB/s
//	32768     4685 (1.14x)       88k/s          13.3k/s       3221 MB/s    1327 MB/s
//	65536     4374 (1.07x)       68k/s           8.0k/s       3604 MB/s    1401 MB/s
//
// (* including a synced Flush every 4 MiB for random and every 64 MiB for
// sequential writes. Random reads measured before reads kept their
// transaction open; with it, 4096-byte pages reach 140k-210k/s.)
//
// A 4 KiB sector does not fit in a 4096-byte page: SQLite keeps 489 bytes
// in the leaf and the rest on one overflow page, so a sector costs one
// overflow page plus an eighth of a leaf. Small pages win random access,
// the dominant guest pattern, at near-minimal file size; larger pages win
// sequential throughput, which is already far above what NBD clients
// reach. 8 KiB pages hold one 4 KiB sector each (2x the file) and a 64 KiB
// page holds one 32 KiB sector (2x); 4096-byte pages with overflow chains
// keep the overhead near 1.1x for every sector size, so they are used
// throughout (sector sizes other than 4 KiB were not benchmarked).
func pageSizeFor(sectorSize int) int {
	if pageSizeOverride != 0 {
		return pageSizeOverride
	}
	return 4096
}

// pageSizeOverride replaces pageSizeFor's choice; set only by tests and
// benchmarks that compare page sizes.
var pageSizeOverride int

// File is an open SQLite layer. It implements disklayer.Disk, OwnReader
// and ReadCacher over the sectors table; Hibernate gives the same engine
// over hibernate_blocks.
//
// All methods are safe for concurrent use. One connection serves every
// request, under a mutex: reads run inside the writer's open transaction,
// so a read sees every write that completed before it, flushed or not.
// The transaction stays open between requests until Flush (or a batch
// reaching batchBytes) commits it; reads do not end it, which spares two
// WAL lock system calls per read. So a File opened read-only reads one
// snapshot of the database, taken at its first read after Open or Flush;
// changes made by other processes appear after its next Flush.
type File struct {
	eng  *engine
	disk *blockTable
	hib  *blockTable
}

// Create makes a new layer file at path and returns it open for writing.
// It refuses an existing path, and validates the sizes and the parent
// reference (ErrInvalid).
func Create(path string, opts CreateOptions) (*File, error) {
	info, err := newInfo(opts)
	if err != nil {
		return nil, fileError("create layer", path, err)
	}
	conn, err := createDatabase(path, info, store.Options{CacheBytes: cacheBytes, Scratch: opts.Scratch})
	if err != nil {
		return nil, fileError("create layer", path, mapStoreError(err))
	}
	held, err := lock.Acquire(path, lock.Exclusive)
	if err != nil {
		conn.Close()
		return nil, fileError("create layer", path, err)
	}
	if createIncremental && !opts.Scratch {
		if err := makeIncremental(conn); err != nil {
			conn.Close()
			held.Release()
			return nil, fileError("create layer", path, mapStoreError(err))
		}
	}
	f, err := newFile(conn, path, false, opts.Scratch)
	if err != nil {
		conn.Close()
		held.Release()
		return nil, err
	}
	f.eng.held = held
	if !opts.Scratch {
		_ = f.eng.startDirect(false)
	}
	if opts.Scratch {
		if err := conn.Exec("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF"); err != nil {
			f.Close()
			return nil, fileError("create layer", path, mapStoreError(err))
		}
	}
	return f, nil
}

// createDatabase makes the layer's database at path, with its schema and
// layer row (info), and returns its connection; opts gives the rest
// (cache, Scratch).
func createDatabase(path string, info Info, opts store.Options) (*sqlite3.Conn, error) {
	return store.Create(path, layerStoreOptions(info, opts, nil))
}

// createDatabaseFile is createDatabase without the open: then, in the
// transaction that wrote the layer row, it runs after (which may read
// the new database's layout).
func createDatabaseFile(path string, info Info, after func(*sqlite3.Conn) error) error {
	return store.CreateFile(path, layerStoreOptions(info, store.Options{}, after))
}

// layerStoreOptions completes opts for creating a layer described by
// info: its page size, memory bound, schema, and the layer row (then
// after, if not nil) written in the creating transaction.
func layerStoreOptions(info Info, opts store.Options, after func(*sqlite3.Conn) error) store.Options {
	opts.PageSize = pageSizeFor(info.SectorSize)
	opts.MaxMemory = maxMemory
	opts.Migrations = schema.History
	opts.Init = func(conn *sqlite3.Conn) error {
		if err := insertLayerRow(conn, info); err != nil || after == nil {
			return err
		}
		return after(conn)
	}
	return opts
}

func newInfo(opts CreateOptions) (Info, error) {
	info := Info{
		SectorSize: opts.SectorSize,
		DiskSize:   opts.Size,
		Label:      opts.Label,
		ReadCache:  opts.ReadCache,
		CreatedAt:  time.Now().UTC().Truncate(time.Second),
	}
	if info.SectorSize == 0 {
		info.SectorSize = disklayer.DefaultSectorSize
	}
	if !disklayer.ValidSectorSize(info.SectorSize) {
		return Info{}, fmt.Errorf("sector size %d: want a power of two in [%d, %d]: %w", info.SectorSize, disklayer.MinSectorSize, disklayer.MaxSectorSize, disklayer.ErrInvalid)
	}
	if err := validDiskSize(info.DiskSize, info.SectorSize); err != nil {
		return Info{}, err
	}
	if opts.Parent != nil {
		if err := validateParent(*opts.Parent); err != nil {
			return Info{}, fmt.Errorf("%w: %w", err, disklayer.ErrInvalid)
		}
		p := *opts.Parent
		info.Parent = &p
	}
	id, err := newUUID()
	if err != nil {
		return Info{}, err
	}
	info.UUID = id
	return info, nil
}

// maxDiskSize keeps sector numbers and byte offsets far from overflow.
const maxDiskSize = 1 << 60

func validDiskSize(size int64, sectorSize int) error {
	if size < 0 || size > maxDiskSize || size%int64(sectorSize) != 0 {
		return &disklayer.SizeError{Size: size, SectorSize: sectorSize}
	}
	return nil
}

// newUUID returns a random (version 4) UUID.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate uuid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// Open opens an existing layer. A file that is not a layer is ErrNotLayer,
// a newer schema ErrUnsupportedVersion, a damaged database or layer row
// ErrCorrupt. Open does not look at the parent: stacking (diffdisk)
// verifies it.
func Open(path string, opts OpenOptions) (f *File, err error) {
	if err := checkFileLength(path); err != nil {
		return nil, fileError("open layer", path, err)
	}
	// A sealed layer's bytes are its identity: even setting WAL mode,
	// which every writable open does, would change them.
	if !opts.ReadOnly {
		sealed, err := isSealed(path)
		if err != nil {
			return nil, fileError("open layer", path, err)
		}
		if sealed {
			return nil, sealedError(path)
		}
	}
	// The lock comes before SQLite opens the file: a layer someone else
	// writes is refused before a migration or a write could touch it.
	held, err := lock.Acquire(path, holdMode(opts))
	if err != nil {
		return nil, fileError("open layer", path, err)
	}
	defer func() {
		if err != nil {
			held.Release()
		}
	}()
	if err := checkWALBelongs(path); err != nil {
		return nil, fileError("open layer", path, err)
	}
	var sidecars store.Sidecars
	if opts.ReadOnly {
		sidecars = store.NoteSidecars(path)
	}
	conn, err := store.Open(path, store.Options{
		ReadOnly:     opts.ReadOnly,
		Stable:       holdMode(opts) == lock.Stable,
		CacheBytes:   cacheBytesFor(opts.ReadOnly),
		MaxMemory:    maxMemory,
		Migrations:   schema.History,
		ReadableFrom: schema.ReadableFrom,
	})
	if err != nil {
		return nil, fileError("open layer", path, mapStoreError(err))
	}
	if opts.Strict {
		r := &Report{Path: path}
		checkLayer(conn, r)
		if !r.OK() {
			conn.Close()
			return nil, fileError("open layer", path, fmt.Errorf("strictly: %s: %w", strings.Join(r.Problems, "; "), disklayer.ErrCorrupt))
		}
	}
	f, err = newFile(conn, path, opts.ReadOnly, false)
	if err != nil {
		conn.Close()
		return nil, err
	}
	f.eng.held = held
	if opts.ReadOnly && f.eng.info.ReadOnly {
		// Read-only and out of WAL mode: sealed (seal.go). A writable
		// open has just put the file in WAL mode: never sealed.
		if h, err := store.ReadHeader(path); err == nil && !h.WAL() {
			f.eng.info.Sealed = true
		}
	}
	f.eng.sidecars = sidecars
	if holdMode(opts) == lock.Exclusive {
		// Direct reads are an optimisation: without them reads go
		// through SQLite, as they always did. Layers held stable (a
		// chain's parents) keep SQLite's path for now: their sequential
		// reads go through the VFS's read streams (FADV_WILLNEED 8 MiB
		// ahead, internal/store readAhead), which a cold whole-disk read
		// needed (15 s -> 6 s), and direct reads fault the mapping page
		// by page; see docs/scale-work.md.
		_ = f.eng.startDirect(false)
	}
	if opts.WriteBack && !opts.ReadOnly {
		f.eng.wb = newWriteBack(f.disk)
	}
	// Free space left by another SQLite client, or by a reclaim a crash
	// cut short, goes back now.
	f.eng.lock()
	f.eng.kickReclaimLocked()
	f.eng.mu.Unlock()
	return f, nil
}

// holdMode is the lock an open takes (see OpenOptions.HoldStable).
func holdMode(opts OpenOptions) lock.Mode {
	switch {
	case !opts.ReadOnly:
		return lock.Exclusive
	case opts.HoldStable:
		return lock.Stable
	}
	return lock.Shared
}

// checkFileLength refuses a database file shorter than its header says, as
// left by truncation. SQLite itself only notices when it reaches a missing
// page. The header's page count is only meaningful when it is marked valid
// and no WAL holds newer pages.
func checkFileLength(path string) error {
	h, err := store.ReadHeader(path)
	if err != nil {
		return mapStoreError(err)
	}
	if !h.PageCountValid() {
		return nil
	}
	if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > 0 {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if want := int64(h.PageCount) * int64(h.PageSize); st.Size() < want {
		return fmt.Errorf("file is %d bytes, its header says %d pages of %d bytes (%d bytes): truncated: %w", st.Size(), h.PageCount, h.PageSize, want, disklayer.ErrCorrupt)
	}
	return nil
}

func newFile(conn *sqlite3.Conn, path string, readOnly, scratch bool) (*File, error) {
	e := &engine{conn: conn, path: path, openedReadOnly: readOnly, scratch: scratch}
	info, err := readLayerRow(conn)
	if err != nil {
		return nil, fileError("open layer", path, err)
	}
	e.setInfo(info)
	if !readOnly {
		// Statement journals in memory: an upsert of a run of rows over
		// existing ones journals more than SQLite's 64 KiB spill
		// threshold, and spilled to a temporary file, a pwrite per page
		// (fio's 1 MiB writes over written sectors: 230 -> 420 MiB/s).
		// They hold what one statement changes (a TRIM of 1.5 GiB left
		// anonymous memory as with files); a VACUUM, whose temporary
		// database is the layer's size, switches back (vacuumOnDisk).
		if err := conn.Exec("PRAGMA temp_store=MEMORY"); err != nil {
			return nil, fileError("open layer", path, mapStoreError(err))
		}
	}
	for _, s := range []struct {
		stmt **sqlite3.Stmt
		sql  string
	}{
		{&e.begin, "BEGIN IMMEDIATE"},
		{&e.beginRead, "BEGIN"},
		{&e.commit, "COMMIT"},
		{&e.rollback, "ROLLBACK"},
	} {
		if *s.stmt, _, err = conn.Prepare(s.sql); err != nil {
			e.closeStatements()
			return nil, fileError("open layer", path, fmt.Errorf("prepare %s: %w", s.sql, err))
		}
	}
	if !readOnly {
		if err := e.prepareGenerations(); err != nil {
			e.closeStatements()
			return nil, fileError("open layer", path, err)
		}
	}
	if !readOnly && !scratch {
		if err := startBackgroundCheckpoints(e); err != nil {
			e.closeStatements()
			return nil, fileError("open layer", path, err)
		}
		if err := startReclaim(e); err != nil {
			e.closeStatements()
			e.ckpt.stop()
			return nil, fileError("open layer", path, err)
		}
	}
	f := &File{eng: e}
	f.disk, err = newBlockTable(e, "sectors", "sector", info.SectorSize, info.DiskSize)
	if err == nil {
		err = f.disk.prepareSummary()
	}
	if err == nil {
		f.hib, err = newBlockTable(e, "hibernate_blocks", "block", info.SectorSize, HibernateSize)
	}
	if err != nil {
		e.closeStatements()
		if e.rc != nil {
			e.rc.stop()
		}
		if e.ckpt != nil {
			e.ckpt.stop()
		}
		return nil, fileError("open layer", path, mapStoreError(err))
	}
	return f, nil
}

// IsLayer reports whether the file at path is a hibdisk layer, from its
// SQLite header and application_id alone. Anything else (including an
// empty or short file) is (false, nil); only I/O errors are errors.
func IsLayer(path string) (bool, error) {
	ok, app, err := store.IsSQLite(path)
	if err != nil {
		return false, fmt.Errorf("inspect %q: %w", path, err)
	}
	return ok && app == store.ApplicationID, nil
}

// Info returns the layer row.
func (f *File) Info() Info {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	info := e.info
	if info.Parent != nil {
		p := *info.Parent
		info.Parent = &p
	}
	return info
}

// Path returns the file name the layer was opened with.
func (f *File) Path() string { return f.eng.path }

// Size is the disk size in bytes.
func (f *File) Size() int64 { return f.disk.Size() }

// SectorSize is the layer's sector size in bytes.
func (f *File) SectorSize() int { return f.disk.blockSize }

// ReadAt reads the layer's own content: zeros where it stores nothing.
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.disk.ReadAt(p, off) }

// ReadOwn implements OwnReader.
func (f *File) ReadOwn(p []byte, off int64, absent func(off, length int64) error) error {
	return f.disk.ReadOwn(p, off, absent)
}

// WriteAt implements Disk.
func (f *File) WriteAt(p []byte, off int64) (int, error) { return f.disk.WriteAt(p, off) }

// Zero implements Disk.
func (f *File) Zero(off, length int64) error { return f.disk.Zero(off, length) }

// FillAbsent implements ReadCacher.
func (f *File) FillAbsent(p []byte, off int64) error { return f.disk.FillAbsent(p, off) }

// Extents implements Layer.
func (f *File) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	return f.disk.Extents(off, length)
}

// Flush commits the open write batch with a synced WAL. After writes
// were lost for lack of space, it returns that loss once instead (see
// loseBatchLocked).
func (f *File) Flush() error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable("flush"); err != nil {
		return err
	}
	return f.disk.flushLocked("flush")
}

// Hibernate returns the layer's hibernate file: the same engine over the
// hibernate_blocks table (block size = sector size, size HibernateSize).
// It shares f's connection and write batch: f.Flush flushes it too. Its
// Close flushes and detaches the view; closing f closes it as well.
func (f *File) Hibernate() disklayer.Disk { return f.hib }

// Close flushes the open batch and closes the database. The returned error
// is the flush's (or the sticky failure); the layer is closed either way.
func (f *File) Close() error {
	e := f.eng
	if e.rc != nil {
		// Before the lock: the reclaimer may be waiting for it. Close
		// finishes a reclaim that is due (closeLocked).
		e.rc.stop()
	}
	e.mu.Lock()
	err := e.closeLocked()
	e.mu.Unlock()
	if e.wb != nil {
		// The applier may have been waiting for the lock; it finds
		// nothing to apply and exits.
		e.wb.wait()
	}
	return err
}
