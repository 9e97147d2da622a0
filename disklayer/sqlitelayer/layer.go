package sqlitelayer

import (
	"crypto/rand"
	"errors"
	"fmt"
	"iter"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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

// validateParent checks a parent reference before it is stored in the
// layer row.
func validateParent(r disklayer.ParentRef) error {
	switch {
	case r.Path == "":
		return errors.New("parent path is empty")
	case r.Size < 0:
		return fmt.Errorf("parent size %d is negative", r.Size)
	case r.Format == disklayer.FormatHibdisk && r.UUID == "":
		return errors.New("hibdisk parent without uuid")
	case r.Format == disklayer.FormatHibdisk && (r.Digest != "" || r.SHA256 != "" || r.Stat != ""):
		return errors.New("hibdisk parent with a raw digest")
	case r.Format == disklayer.FormatRaw && r.Generation != 0:
		return errors.New("raw parent with a generation")
	case r.Generation < 0:
		return fmt.Errorf("parent generation %d is negative", r.Generation)
	case r.Format == disklayer.FormatRaw && r.UUID != "":
		return errors.New("raw parent with a uuid")
	case r.Format != disklayer.FormatHibdisk && r.Format != disklayer.FormatRaw:
		return fmt.Errorf("parent format %q is neither %q nor %q", r.Format, disklayer.FormatHibdisk, disklayer.FormatRaw)
	}
	return nil
}

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
}

// CreateOptions describe a new layer.
type CreateOptions struct {
	Size       int64                // bytes the guest sees; a multiple of SectorSize
	SectorSize int                  // 0 means DefaultSectorSize
	Parent     *disklayer.ParentRef // nil for a base layer
	Label      string
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

// Stats summarise a layer's contents, for `hibdisk info`.
type Stats struct {
	DataSectors      int64 // rows in sectors holding data
	TombstoneSectors int64 // rows in sectors with data IS NULL
	DataBlocks       int64 // rows in hibernate_blocks holding data
	TombstoneBlocks  int64 // rows in hibernate_blocks with data IS NULL
	PageSize         int
	FileBytes        int64 // the database file plus its WAL
}

// Tuning. pageSizeFor documents the page size measurement.
const (
	// cacheBytes is SQLite's page cache per connection. It counts against
	// the connection's memory cap (maxMemory).
	cacheBytes = 64 << 20
	maxMemory  = 256 << 20
	// batchBytes bounds the data written in one transaction before it is
	// committed early; the WAL then stays bounded during long sequential
	// writes. Early commits run with synchronous=FULL like every commit,
	// so they are as durable as a Flush.
	batchBytes = 16 << 20
)

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

// File is an open SQLite layer. It implements Disk, OwnReader and
// ReadCacher over the sectors table; Hibernate gives the same engine over
// hibernate_blocks.
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

// engine is the state a File and its Hibernate view share: one
// connection, its open write batch, and the sticky error.
type engine struct {
	mu   sync.Mutex
	conn *sqlite3.Conn
	path string

	openedReadOnly bool
	info           Info // the layer row; changed only under mu
	hasParent      atomic.Bool
	readOnlyColumn atomic.Bool

	// inTx: a transaction is open. Reads open one too and leave it open
	// (a deferred BEGIN): each statement in autocommit mode would take and
	// release WAL read locks, two fcntl calls per read. The first write
	// upgrades the transaction; Flush commits it.
	inTx bool
	// writeTx: the open transaction holds the write lock (it began as
	// or was turned into the write batch). Only meaningful while inTx.
	writeTx      bool
	pendingBytes int64 // bytes written in the open batch
	// failure is sticky: set when a commit fails or SQLite rolled back a
	// batch on its own, so writes the caller saw succeed were lost. Every
	// later request returns it. A loss for lack of space is not sticky:
	// see loseBatchLocked.
	failure error
	closed  bool

	begin, beginRead, commit, rollback *sqlite3.Stmt
	tables                             []*blockTable

	// ckpt checkpoints in the background (writable opens only). walBytes
	// is the WAL's size after the last commit (from the WAL hook);
	// requestedAt its size at the last checkpoint request.
	ckpt        *checkpointer
	walBytes    int64
	requestedAt int64

	// wb is the sectors table's write-back (OpenOptions.WriteBack), or nil.
	wb *writeBack
	// held is the layer's lock against other processes (internal/lock),
	// released when the layer closes.
	held *lock.Lock

	// contentChanged: the open write transaction changed content, so its
	// commit bumps the generation (bumpGen, writable opens only).
	contentChanged bool
	bumpGen        *sqlite3.Stmt
}

// Create makes a new layer file at path and returns it open for writing.
// It refuses an existing path, and validates the sizes and the parent
// reference (ErrInvalid).
func Create(path string, opts CreateOptions) (*File, error) {
	info, err := newInfo(opts)
	if err != nil {
		return nil, fmt.Errorf("create layer %q: %w", path, err)
	}
	conn, err := store.Create(path, store.Options{
		PageSize:   pageSizeFor(info.SectorSize),
		CacheBytes: cacheBytes,
		MaxMemory:  maxMemory,
		Migrations: schema.History,
		Init:       func(conn *sqlite3.Conn) error { return insertLayerRow(conn, info) },
	})
	if err != nil {
		return nil, fmt.Errorf("create layer %q: %w", path, mapStoreError(err))
	}
	held, err := lock.Acquire(path, lock.Exclusive)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("create layer %q: %w", path, err)
	}
	f, err := newFile(conn, path, false)
	if err != nil {
		conn.Close()
		held.Release()
		return nil, err
	}
	f.eng.held = held
	return f, nil
}

func newInfo(opts CreateOptions) (Info, error) {
	info := Info{
		SectorSize: opts.SectorSize,
		DiskSize:   opts.Size,
		Label:      opts.Label,
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
		return fmt.Errorf("disk size %d: want a multiple of the %d-byte sector size in [0, 2^60]: %w", size, sectorSize, disklayer.ErrInvalid)
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

func insertLayerRow(conn *sqlite3.Conn, info Info) error {
	stmt, _, err := conn.Prepare(`INSERT INTO layer (id, uuid, sector_size, disk_size, read_only, created_at, label) VALUES (1, ?1, ?2, ?3, 0, ?4, ?5)`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	stmt.BindText(1, info.UUID)
	stmt.BindInt64(2, int64(info.SectorSize))
	stmt.BindInt64(3, info.DiskSize)
	stmt.BindText(4, info.CreatedAt.Format(time.RFC3339))
	bindOptionalText(stmt, 5, info.Label)
	if err := stmt.Exec(); err != nil {
		return err
	}
	return updateParent(conn, info.Parent)
}

func updateParent(conn *sqlite3.Conn, ref *disklayer.ParentRef) error {
	stmt, _, err := conn.Prepare(`UPDATE layer SET parent_path = ?1, parent_format = ?2, parent_uuid = ?3, parent_size = ?4, parent_digest = ?5,
  parent_generation = ?6, parent_sha256 = ?7, parent_stat = ?8`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	if ref != nil {
		stmt.BindText(1, ref.Path)
		stmt.BindText(2, ref.Format)
		bindOptionalText(stmt, 3, ref.UUID)
		stmt.BindInt64(4, ref.Size)
		bindOptionalText(stmt, 5, ref.Digest)
		if ref.Generation != 0 {
			stmt.BindInt64(6, ref.Generation)
		}
		bindOptionalText(stmt, 7, ref.SHA256)
		bindOptionalText(stmt, 8, ref.Stat)
	}
	return stmt.Exec()
}

// bindOptionalText binds "" as NULL.
func bindOptionalText(stmt *sqlite3.Stmt, param int, s string) {
	if s == "" {
		stmt.BindNull(param)
	} else {
		stmt.BindText(param, s)
	}
}

// Open opens an existing layer. A file that is not a layer is ErrNotLayer,
// a newer schema ErrUnsupportedVersion, a damaged database or layer row
// ErrCorrupt. Open does not look at the parent: stacking (diffdisk)
// verifies it.
func Open(path string, opts OpenOptions) (f *File, err error) {
	if err := checkFileLength(path); err != nil {
		return nil, fmt.Errorf("open layer %q: %w", path, err)
	}
	// The lock comes before SQLite opens the file: a layer someone else
	// writes is refused before a migration or a write could touch it.
	held, err := lock.Acquire(path, holdMode(opts))
	if err != nil {
		return nil, fmt.Errorf("open layer %q: %w", path, err)
	}
	defer func() {
		if err != nil {
			held.Release()
		}
	}()
	if err := checkWALBelongs(path); err != nil {
		return nil, fmt.Errorf("open layer %q: %w", path, err)
	}
	conn, err := store.Open(path, store.Options{
		ReadOnly:     opts.ReadOnly,
		CacheBytes:   cacheBytes,
		MaxMemory:    maxMemory,
		Migrations:   schema.History,
		ReadableFrom: schema.ReadableFrom,
	})
	if err != nil {
		return nil, fmt.Errorf("open layer %q: %w", path, mapStoreError(err))
	}
	if opts.Strict {
		r := &Report{Path: path}
		checkLayer(conn, r)
		if !r.OK() {
			conn.Close()
			return nil, fmt.Errorf("open layer %q strictly: %s: %w", path, strings.Join(r.Problems, "; "), disklayer.ErrCorrupt)
		}
	}
	f, err = newFile(conn, path, opts.ReadOnly)
	if err != nil {
		conn.Close()
		return nil, err
	}
	f.eng.held = held
	if opts.WriteBack && !opts.ReadOnly {
		f.eng.wb = newWriteBack(f.disk)
	}
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

// mapStoreError translates store and SQLite errors to the layer sentinels,
// keeping the original text.
func mapStoreError(err error) error {
	switch {
	case errors.Is(err, store.ErrNotSQLite), errors.Is(err, store.ErrOtherApplication), errors.Is(err, sqlite3.NOTADB):
		return fmt.Errorf("%w: %w", err, disklayer.ErrNotLayer)
	case errors.Is(err, store.ErrNewerSchema):
		return fmt.Errorf("%w: %w", err, disklayer.ErrUnsupportedVersion)
	case errors.Is(err, sqlite3.CORRUPT):
		return fmt.Errorf("%w: %w", err, disklayer.ErrCorrupt)
	case errors.Is(err, sqlite3.FULL), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%w: %w", err, disklayer.ErrNoSpace)
	case errors.Is(err, store.ErrNeedsMigration):
		// The two sentinels have one text: keep it once.
		return alsoIs{err, disklayer.ErrNeedsMigration}
	}
	return err
}

// alsoIs is err, whose text it keeps, with target added to its chain.
type alsoIs struct{ err, target error }

func (e alsoIs) Error() string   { return e.err.Error() }
func (e alsoIs) Unwrap() []error { return []error{e.err, e.target} }

func newFile(conn *sqlite3.Conn, path string, readOnly bool) (*File, error) {
	e := &engine{conn: conn, path: path, openedReadOnly: readOnly}
	info, err := readLayerRow(conn)
	if err != nil {
		return nil, fmt.Errorf("open layer %q: %w", path, err)
	}
	e.setInfo(info)
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
			return nil, fmt.Errorf("open layer %q: prepare %s: %w", path, s.sql, err)
		}
	}
	if !readOnly {
		if err := e.prepareGenerations(); err != nil {
			e.closeStatements()
			return nil, fmt.Errorf("open layer %q: %w", path, err)
		}
		if err := startBackgroundCheckpoints(e); err != nil {
			e.closeStatements()
			return nil, fmt.Errorf("open layer %q: %w", path, err)
		}
	}
	f := &File{eng: e}
	f.disk, err = newBlockTable(e, "sectors", "sector", info.SectorSize, info.DiskSize)
	if err == nil {
		f.hib, err = newBlockTable(e, "hibernate_blocks", "block", info.SectorSize, HibernateSize)
	}
	if err != nil {
		e.closeStatements()
		if e.ckpt != nil {
			e.ckpt.stop()
		}
		return nil, fmt.Errorf("open layer %q: %w", path, mapStoreError(err))
	}
	return f, nil
}

// startBackgroundCheckpoints moves WAL checkpoints off the request path:
// the engine's connection stops checkpointing by itself, and a
// checkpointer does it when enough has been committed.
func startBackgroundCheckpoints(e *engine) error {
	if err := e.conn.Exec(fmt.Sprintf("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=%d", walKeepBytes)); err != nil {
		return fmt.Errorf("disable automatic checkpoints: %w", err)
	}
	pageSize, err := store.PragmaInt(e.conn, "page_size")
	if err != nil {
		return err
	}
	// Set after wal_autocheckpoint, which replaces the WAL hook. It runs
	// inside COMMIT, under e.mu.
	e.conn.WALHook(func(_ *sqlite3.Conn, _ string, pages int) error {
		e.walBytes = int64(pages) * pageSize
		return nil
	})
	c, err := startCheckpointer(e.path)
	if err != nil {
		return err
	}
	e.ckpt = c
	return nil
}

// setInfo publishes a committed layer row. Called with mu held (or
// before the engine is shared).
func (e *engine) setInfo(info Info) {
	e.info = info
	for _, t := range e.tables {
		if t.table == "sectors" {
			t.size.Store(info.DiskSize)
		}
	}
	e.hasParent.Store(info.Parent != nil)
	e.readOnlyColumn.Store(info.ReadOnly)
}

func (e *engine) closeStatements() {
	for _, t := range e.tables {
		t.closeStatements()
	}
	for _, s := range []*sqlite3.Stmt{e.begin, e.beginRead, e.commit, e.rollback, e.bumpGen} {
		if s != nil {
			s.Close()
		}
	}
}

// readLayerRow reads and validates the layer row. Any inconsistency is
// ErrCorrupt: a layer whose row cannot be trusted cannot be served.
func readLayerRow(conn *sqlite3.Conn) (Info, error) {
	var problems []string
	info, ok := scanLayerRow(conn, func(p string) { problems = append(problems, p) })
	if len(problems) > 0 || !ok {
		return Info{}, fmt.Errorf("layer row: %s: %w", strings.Join(problems, "; "), disklayer.ErrCorrupt)
	}
	return info, nil
}

// scanLayerRow reads the layer row, reporting every problem it finds. ok
// is false when the row could not be read at all.
func scanLayerRow(conn *sqlite3.Conn, problem func(string)) (info Info, ok bool) {
	// Schema version 5 added generations and full parent identities; an
	// older layer opened read-only reads as having none recorded.
	v5, err := hasGenerations(conn)
	if err != nil {
		problem(fmt.Sprintf("cannot read the schema version: %v", mapStoreError(err)))
		return Info{}, false
	}
	extra := `0, NULL, NULL, NULL, 'integer', 'null'`
	if v5 {
		extra = `generation, parent_generation, parent_sha256, parent_stat, typeof(generation), typeof(parent_generation)`
	}
	stmt, _, err := conn.Prepare(`SELECT uuid, sector_size, disk_size, parent_path, parent_format, parent_uuid, parent_size, parent_digest, read_only, created_at, label, typeof(sector_size), typeof(disk_size), typeof(parent_size), ` + extra + ` FROM layer`)
	if err != nil {
		problem(fmt.Sprintf("cannot read the layer table: %v", mapStoreError(err)))
		return Info{}, false
	}
	defer stmt.Close()
	rows := 0
	for stmt.Step() {
		rows++
		if rows > 1 {
			continue
		}
		info = Info{
			UUID:       stmt.ColumnText(0),
			SectorSize: stmt.ColumnInt(1),
			DiskSize:   stmt.ColumnInt64(2),
			ReadOnly:   stmt.ColumnInt64(8) != 0,
			Label:      stmt.ColumnText(10),
			Generation: stmt.ColumnInt64(14),
		}
		if v5 && (stmt.ColumnText(18) != "integer" || info.Generation < 1) {
			problem(fmt.Sprintf("generation %s must be an integer of at least 1", stmt.ColumnText(14)))
		}
		if stmt.ColumnText(11) != "integer" || stmt.ColumnText(12) != "integer" {
			problem(fmt.Sprintf("sector_size (%s) and disk_size (%s) must be integers", stmt.ColumnText(11), stmt.ColumnText(12)))
		}
		if info.UUID == "" {
			problem("uuid is empty")
		}
		if !disklayer.ValidSectorSize(info.SectorSize) {
			problem(fmt.Sprintf("sector_size %d is not a power of two in [%d, %d]", info.SectorSize, disklayer.MinSectorSize, disklayer.MaxSectorSize))
		} else if err := validDiskSize(info.DiskSize, info.SectorSize); err != nil {
			problem(fmt.Sprintf("disk_size %d is not a multiple of sector_size %d in [0, 2^60]", info.DiskSize, info.SectorSize))
		}
		created := stmt.ColumnText(9)
		if t, err := time.Parse(time.RFC3339, created); err != nil {
			problem(fmt.Sprintf("created_at %q is not an RFC 3339 time", created))
		} else {
			info.CreatedAt = t.UTC()
		}
		if v := stmt.ColumnInt64(8); v != 0 && v != 1 {
			problem(fmt.Sprintf("read_only is %d, want 0 or 1", v))
		}
		parentSet := 0
		for col := 3; col <= 7; col++ {
			if stmt.ColumnType(col) != sqlite3.NULL {
				parentSet++
			}
		}
		if parentSet == 0 {
			continue
		}
		ref := disklayer.ParentRef{
			Path:       stmt.ColumnText(3),
			Format:     stmt.ColumnText(4),
			UUID:       stmt.ColumnText(5),
			Size:       stmt.ColumnInt64(6),
			Digest:     stmt.ColumnText(7),
			Generation: stmt.ColumnInt64(15),
			SHA256:     stmt.ColumnText(16),
			Stat:       stmt.ColumnText(17),
		}
		if t := stmt.ColumnText(19); t != "integer" && t != "null" {
			problem(fmt.Sprintf("parent_generation must be an integer, is %s", t))
		}
		if stmt.ColumnType(6) != sqlite3.NULL && stmt.ColumnText(13) != "integer" {
			problem(fmt.Sprintf("parent_size must be an integer, is %s", stmt.ColumnText(13)))
		}
		if stmt.ColumnType(6) == sqlite3.NULL {
			problem("parent_size is NULL for a layer with a parent")
		}
		if err := validateParent(ref); err != nil {
			problem(err.Error())
		}
		info.Parent = &ref
	}
	if err := stmt.Err(); err != nil {
		problem(fmt.Sprintf("cannot read the layer row: %v", mapStoreError(err)))
		return Info{}, false
	}
	switch {
	case rows == 0:
		problem("the layer table has no row")
		return Info{}, false
	case rows > 1:
		problem(fmt.Sprintf("the layer table has %d rows, want exactly one", rows))
	}
	return info, true
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

func (e *engine) closeLocked() error {
	if e.closed {
		return fmt.Errorf("close layer %q: %w", e.path, disklayer.ErrClosed)
	}
	if e.wb != nil {
		e.wb.stopLocked()
	}
	var err error
	if e.failure != nil {
		err = e.failure
	} else {
		err = e.commitLocked("close")
	}
	for _, t := range e.tables {
		if err == nil && t.lostErr != nil {
			err = t.lostErr // never reported by a Flush
		}
	}
	if e.inTx {
		e.rollback.Exec()
		e.inTx = false
	}
	e.closeStatements()
	if e.ckpt != nil {
		if cerr := e.ckpt.stop(); cerr != nil && err == nil {
			err = fmt.Errorf("close layer %q: checkpoint: %w", e.path, cerr)
		}
	}
	if cerr := e.conn.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close layer %q: %w", e.path, cerr)
	}
	// The lock outlives the connection: nobody else may write before
	// the last commit and checkpoint are done.
	if cerr := e.held.Release(); cerr != nil && err == nil {
		err = fmt.Errorf("close layer %q: release lock: %w", e.path, cerr)
	}
	e.closed = true
	return err
}

// usable returns the error a request must fail with before touching the
// database: closed, or a sticky failure. Called with mu held.
func (e *engine) usable(op string) error {
	if e.closed {
		return fmt.Errorf("%s %q: %w", op, e.path, disklayer.ErrClosed)
	}
	return e.failure
}

// writable additionally refuses writes to a read-only layer.
func (e *engine) writable(op string) error {
	if err := e.usable(op); err != nil {
		return err
	}
	if e.openedReadOnly {
		return fmt.Errorf("%s %q: opened read-only: %w", op, e.path, disklayer.ErrReadOnly)
	}
	if e.readOnlyColumn.Load() {
		return fmt.Errorf("%s %q: layer is marked read-only: %w", op, e.path, disklayer.ErrReadOnly)
	}
	return nil
}

// beginReadLocked opens a (deferred) transaction for reading if none is
// open.
func (e *engine) beginReadLocked(op string) error {
	if e.inTx {
		return nil
	}
	if err := e.beginRead.Exec(); err != nil {
		return fmt.Errorf("%s %q: begin: %w", op, e.path, mapStoreError(err))
	}
	e.inTx = true
	e.writeTx = false
	e.pendingBytes = 0
	return nil
}

// beginLocked opens the write batch unless it is open. An open read
// transaction is ended first rather than upgraded: its snapshot may be
// older than a commit another connection made since (a `hibdisk ds` or
// `hib capture` process, say), and SQLite refuses to upgrade a stale
// snapshot (SQLITE_BUSY_SNAPSHOT, which no busy timeout cures). It holds
// no writes, so ending it loses nothing; BEGIN IMMEDIATE then waits for
// the write lock under the busy timeout.
func (e *engine) beginLocked(op string) error {
	if e.inTx && e.writeTx {
		return nil
	}
	if e.inTx {
		if err := e.commit.Exec(); err != nil {
			return fmt.Errorf("%s %q: end read transaction: %w", op, e.path, mapStoreError(err))
		}
		e.inTx = false
	}
	if err := e.begin.Exec(); err != nil {
		return fmt.Errorf("%s %q: begin: %w", op, e.path, mapStoreError(err))
	}
	e.inTx = true
	e.writeTx = true
	e.pendingBytes = 0
	e.contentChanged = true
	return nil
}

// commitLocked commits the open batch, if any. A failed commit loses
// writes that were acknowledged: it becomes the sticky failure.
func (e *engine) commitLocked(op string) error {
	if !e.inTx {
		return nil
	}
	gen, err := e.bumpGenerationLocked()
	if err == nil {
		err = e.commit.Exec()
	}
	if err == nil {
		e.inTx = false
		e.pendingBytes = 0
		e.contentChanged = false
		if gen != 0 {
			e.info.Generation = gen
		}
		for _, t := range e.tables {
			t.batch = t.batch[:0]
		}
		e.checkpointLocked()
		return nil
	}
	if err := mapStoreError(err); errors.Is(err, disklayer.ErrNoSpace) {
		return e.loseBatchLocked(fmt.Errorf("%s %q: commit failed, writes since the last flush are lost: %w", op, e.path, err))
	}
	if !e.conn.GetAutocommit() {
		e.rollback.Exec()
	}
	e.inTx = false
	e.fail(fmt.Errorf("%s %q: commit failed, writes since the last flush are lost: %w", op, e.path, mapStoreError(err)))
	return e.failure
}

// checkpointLocked keeps the WAL bounded after a commit: a background
// checkpoint every checkpointBytes of WAL, and a wait for one to catch up
// once the WAL reaches walLimitBytes (see checkpointer).
func (e *engine) checkpointLocked() {
	if e.ckpt == nil {
		return
	}
	if e.walBytes < e.requestedAt {
		e.requestedAt = 0 // the WAL started over
	}
	switch {
	case e.walBytes >= walLimitBytes:
		e.ckpt.catchUp()
		e.requestedAt = e.walBytes
	case e.walBytes-e.requestedAt >= checkpointBytes:
		e.ckpt.request()
		e.requestedAt = e.walBytes
	}
}

// afterWriteLocked accounts n written bytes and commits early when the
// batch is large. err is the write statement's error: if SQLite rolled the
// whole batch back on its own (it does for I/O errors and out of memory),
// acknowledged writes are gone and that becomes the sticky failure.
func (e *engine) afterWriteLocked(op string, n int64, err error) error {
	if err != nil {
		if e.inTx && e.conn.GetAutocommit() && errors.Is(mapStoreError(err), disklayer.ErrNoSpace) {
			return e.loseBatchLocked(fmt.Errorf("%s %q: the write batch was rolled back, writes since the last flush are lost: %w", op, e.path, err))
		}
		if e.inTx && e.conn.GetAutocommit() {
			e.inTx = false
			e.fail(fmt.Errorf("%s %q: the write batch was rolled back, writes since the last flush are lost: %w", op, e.path, mapStoreError(err)))
			return e.failure
		}
		return err
	}
	e.pendingBytes += n
	if e.pendingBytes >= batchBytes {
		return e.commitLocked(op)
	}
	return nil
}

// SetParent rewrites the parent reference (rebase -u); nil makes the layer
// a base, which also drops its tombstones, since nothing is below them.
func (f *File) SetParent(ref *disklayer.ParentRef) error {
	if ref != nil {
		if err := validateParent(*ref); err != nil {
			return fmt.Errorf("set parent of %q: %w: %w", f.eng.path, err, disklayer.ErrInvalid)
		}
		r := *ref
		ref = &r
	}
	return f.eng.updateMetadata("set parent", false, func(conn *sqlite3.Conn, info *Info) error {
		if err := updateParent(conn, ref); err != nil {
			return err
		}
		if ref == nil {
			for _, table := range []string{"sectors", "hibernate_blocks"} {
				if err := conn.Exec("DELETE FROM " + table + " WHERE data IS NULL"); err != nil {
					return err
				}
			}
		}
		info.Parent = ref
		return nil
	})
}

// Resize changes the disk size. Shrinking drops the rows past the new end.
// Growing a layer with a parent writes tombstones over the part of the
// parent that was hidden beyond the old end, so it does not reappear.
func (f *File) Resize(size int64) error {
	if err := validDiskSize(size, f.disk.blockSize); err != nil {
		return fmt.Errorf("resize %q: %w", f.eng.path, err)
	}
	return f.eng.updateMetadata("resize", true, func(conn *sqlite3.Conn, info *Info) error {
		return f.resizeInTx(conn, info, size)
	})
}

// resizeInTx changes the disk size inside the caller's transaction and
// updates info; the caller publishes info once the transaction commits.
func (f *File) resizeInTx(conn *sqlite3.Conn, info *Info, size int64) error {
	t := f.disk
	old := info.DiskSize
	ss := int64(info.SectorSize)
	switch {
	case size < old:
		if err := t.deleteBlocks(size/ss, old/ss-1); err != nil {
			return err
		}
	case size > old && info.Parent != nil:
		if hidden := min(size, info.Parent.Size); hidden > old {
			if err := t.tombstoneBlocks(old/ss, (hidden+ss-1)/ss-1); err != nil {
				return err
			}
		}
	}
	stmt, _, err := conn.Prepare("UPDATE layer SET disk_size = ?1")
	if err != nil {
		return err
	}
	defer stmt.Close()
	stmt.BindInt64(1, size)
	if err := stmt.Exec(); err != nil {
		return err
	}
	info.DiskSize = size
	return nil
}

// SetReadOnly sets the read_only column. A layer marked read-only refuses
// writes and metadata changes (ErrReadOnly) until it is cleared.
func (f *File) SetReadOnly(readOnly bool) error {
	return f.eng.updateMetadataAllowReadOnly("set read-only", false, func(conn *sqlite3.Conn, info *Info) error {
		v := 0
		if readOnly {
			v = 1
		}
		if err := conn.Exec(fmt.Sprintf("UPDATE layer SET read_only = %d", v)); err != nil {
			return err
		}
		info.ReadOnly = readOnly
		return nil
	})
}

// SetLabel sets the label column ("" stores NULL).
func (f *File) SetLabel(label string) error {
	return f.eng.updateMetadata("set label", false, func(conn *sqlite3.Conn, info *Info) error {
		stmt, _, err := conn.Prepare("UPDATE layer SET label = ?1")
		if err != nil {
			return err
		}
		defer stmt.Close()
		bindOptionalText(stmt, 1, label)
		if err := stmt.Exec(); err != nil {
			return err
		}
		info.Label = label
		return nil
	})
}

// updateMetadata changes the layer row (see changeMetadataLocked).
// content says whether the change alters what the layer shows a child
// (its size does; its label, read-only flag and parent reference do not),
// which bumps the generation.
func (e *engine) updateMetadata(op string, content bool, change func(*sqlite3.Conn, *Info) error) error {
	e.lock()
	defer e.mu.Unlock()
	if err := e.writable(op); err != nil {
		return err
	}
	return e.changeMetadataLocked(op, content, change)
}

func (e *engine) updateMetadataAllowReadOnly(op string, content bool, change func(*sqlite3.Conn, *Info) error) error {
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable(op); err != nil {
		return err
	}
	if e.openedReadOnly {
		return fmt.Errorf("%s %q: opened read-only: %w", op, e.path, disklayer.ErrReadOnly)
	}
	return e.changeMetadataLocked(op, content, change)
}

// changeMetadataLocked applies a metadata change inside the write batch
// and commits it at once: metadata changes are rare and must not wait for
// a Flush. The cached Info changes only if the commit succeeds.
func (e *engine) changeMetadataLocked(op string, content bool, change func(*sqlite3.Conn, *Info) error) error {
	batched, changed := e.inTx && e.writeTx, e.contentChanged
	if err := e.beginLocked(op); err != nil {
		return err
	}
	if !batched {
		// A transaction of its own: it changes content only if the
		// change does. (Batched writes before it did change content.)
		e.contentChanged = content
	}
	// A savepoint undoes a failed change without touching the writes
	// batched before it.
	if err := e.conn.Exec("SAVEPOINT metadata"); err != nil {
		return e.afterWriteLocked(op, 0, fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err)))
	}
	info := e.info
	if err := change(e.conn, &info); err != nil {
		err = fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err))
		if e.conn.GetAutocommit() {
			return e.afterWriteLocked(op, 0, err)
		}
		if rerr := e.conn.Exec("ROLLBACK TO metadata; RELEASE metadata"); rerr != nil {
			e.fail(fmt.Errorf("%s %q: undo failed change: %w", op, e.path, rerr))
			return e.failure
		}
		e.contentChanged = batched && changed // nothing of the change remains
		return err
	}
	if err := e.conn.Exec("RELEASE metadata"); err != nil {
		return e.afterWriteLocked(op, 0, fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err)))
	}
	if err := e.commitLocked(op); err != nil {
		return err
	}
	info.Generation = e.info.Generation // as the commit left it
	e.setInfo(info)
	return nil
}

// Stats counts the layer's rows and measures its files.
func (f *File) Stats() (Stats, error) {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable("stats"); err != nil {
		return Stats{}, err
	}
	var s Stats
	var err error
	if s.DataSectors, s.TombstoneSectors, err = f.disk.countRows(); err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	if s.DataBlocks, s.TombstoneBlocks, err = f.hib.countRows(); err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	ps, err := store.PragmaInt(e.conn, "page_size")
	if err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	s.PageSize = int(ps)
	for _, p := range []string{e.path, e.path + "-wal"} {
		if st, err := os.Stat(p); err == nil {
			s.FileBytes += st.Size()
		}
	}
	return s, nil
}
