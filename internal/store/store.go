// Package store opens hibdisk's SQLite databases: it recognises them by
// their header without opening them, applies the connection pragmas, and
// runs ordered schema migrations.
//
// # Invariants
//
//   - Every database store creates carries ApplicationID in its header, and
//     Open refuses a database with another application_id.
//   - user_version is the schema version: the number of migrations applied.
//     Migration i (1-based) runs in its own transaction together with the
//     user_version update, so a crash leaves the database at version i-1 or
//     i, never in between.
//   - Every applied migration is recorded in the migrations table
//     (version, name, applied_at) in the same transaction. The table is
//     created by the first migration that runs; databases migrated before
//     it existed lack rows for their early versions, which
//     AppliedMigrations reports as not recorded.
//   - A database whose user_version is larger than the number of known
//     migrations is refused (ErrNewerSchema), never modified.
//   - A read-only open never migrates. It accepts a schema older than the
//     current one only down to Options.ReadableFrom (ErrNeedsMigration
//     otherwise).
//   - Create never leaves a partly initialised file at the requested path:
//     the database is built under a temporary name and linked into place,
//     which also refuses an existing path atomically.
package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"
	"golang.org/x/sys/unix"
)

// ApplicationID marks hibdisk databases: 'hibd' read as a big-endian uint32.
const ApplicationID uint32 = 0x68696264 // 1751737956

// HeaderSize is the size of the SQLite database header.
const HeaderSize = 100

const headerMagic = "SQLite format 3\x00"

// Errors, wrapped with the path by every function of this package.
var (
	// ErrNotSQLite: the file does not start with the SQLite header (this
	// includes an empty file).
	ErrNotSQLite = errors.New("not an SQLite database")
	// ErrOtherApplication: an SQLite database whose application_id is not
	// ApplicationID.
	ErrOtherApplication = errors.New("SQLite database of another application")
	// ErrNewerSchema: user_version is larger than the migrations this build
	// knows.
	ErrNewerSchema = errors.New("schema newer than this build")
	// ErrNeedsMigration: a read-only open of a database at an older schema
	// version, which cannot be migrated without writing.
	ErrNeedsMigration = errors.New("schema needs migration; open it writable once (hibdisk check --repair)")
)

// Header is the part of the 100-byte SQLite database header that hibdisk
// looks at. Values are as stored in the main database file; in WAL mode a
// newer page 1 may still be in the WAL, which Open accounts for.
type Header struct {
	PageSize      int    // bytes per page (offset 16; 1 means 65536)
	ChangeCounter uint32 // file change counter (offset 24)
	PageCount     uint32 // database size in pages (offset 28)
	ValidFor      uint32 // version-valid-for number (offset 92)
	UserVersion   uint32 // offset 60
	ApplicationID uint32 // offset 68
	// WriteVersion and ReadVersion (offsets 18 and 19) are 2 in WAL
	// mode, 1 in the rollback journal modes.
	WriteVersion, ReadVersion int
}

// WAL reports whether the database is in WAL mode: its file alone may
// lack commits that are still in its -wal file.
func (h Header) WAL() bool { return h.WriteVersion == 2 || h.ReadVersion == 2 }

// PageCountValid reports whether PageCount can be trusted: SQLite only
// keeps it current when ValidFor equals ChangeCounter.
func (h Header) PageCountValid() bool { return h.ValidFor == h.ChangeCounter && h.PageCount != 0 }

// ReadHeader reads the SQLite header of the file at path without opening
// it as a database. A file shorter than the header or without the SQLite
// magic string is ErrNotSQLite.
func ReadHeader(path string) (Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, fmt.Errorf("read header of %q: %w", path, err)
	}
	defer f.Close()
	var b [HeaderSize]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return Header{}, fmt.Errorf("read header of %q: file shorter than %d bytes: %w", path, HeaderSize, ErrNotSQLite)
		}
		return Header{}, fmt.Errorf("read header of %q: %w", path, err)
	}
	return ParseHeader(path, b[:])
}

// ParseHeader parses the first HeaderSize bytes of a database; name is
// how errors call it.
func ParseHeader(path string, b []byte) (Header, error) {
	if string(b[:len(headerMagic)]) != headerMagic {
		return Header{}, fmt.Errorf("read header of %q: %w", path, ErrNotSQLite)
	}
	be := binary.BigEndian
	h := Header{
		PageSize:      int(be.Uint16(b[16:])),
		ChangeCounter: be.Uint32(b[24:]),
		PageCount:     be.Uint32(b[28:]),
		UserVersion:   be.Uint32(b[60:]),
		ApplicationID: be.Uint32(b[68:]),
		ValidFor:      be.Uint32(b[92:]),
		WriteVersion:  int(b[18]),
		ReadVersion:   int(b[19]),
	}
	if h.PageSize == 1 {
		h.PageSize = 65536
	}
	return h, nil
}

// IsSQLite reports whether the file at path starts with the SQLite header,
// and if so its application_id. It reads only the header: it is safe on
// any file, including raw disk images of any size. A file that is not
// SQLite is (false, 0, nil); only I/O errors are errors.
func IsSQLite(path string) (ok bool, applicationID uint32, err error) {
	h, err := ReadHeader(path)
	if errors.Is(err, ErrNotSQLite) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	return true, h.ApplicationID, nil
}

// Migration is one step of a schema. Apply runs inside a transaction that
// also sets user_version to the migration's position (1-based) in
// Options.Migrations; it must not commit or roll back.
type Migration struct {
	Name  string
	Apply func(conn *sqlite3.Conn) error
}

// Options configure Open and Create.
type Options struct {
	// ReadOnly opens the database with SQLITE_OPEN_READONLY. Migrations
	// are not run; an older schema is ErrNeedsMigration.
	ReadOnly bool
	// PageSize applies to Create only (the page size of an existing
	// database is fixed). 0 leaves SQLite's default.
	PageSize int
	// Scratch: the database is a private file that one connection
	// writes with the journal off before anyone else opens it (a Scratch
	// layer): its VFS handle gathers the pages it appends into large
	// writes (dbFile.gather).
	Scratch bool
	// Stable: nobody may write the database while this connection has
	// it open (the caller holds it so: a layer's lock.Stable). Its VFS
	// handle may then keep what it read (fileMap.streamRead).
	Stable bool
	// CacheBytes sets cache_size. It counts against MaxMemory.
	CacheBytes int64
	// MmapBytes sets mmap_size. The mapping lives in the connection's
	// memory and counts against MaxMemory.
	MmapBytes int64
	// MaxMemory caps the connection's memory (ncruces/go-sqlite3 runs
	// SQLite in a sandbox with its own heap). 0 means the library's
	// default of 256 MiB.
	MaxMemory int64
	// Migrations is the ordered schema history; the schema version is the
	// number applied.
	Migrations []Migration
	// ReadableFrom is the oldest schema version a read-only open accepts
	// without migrating, for schemas whose later migrations only add
	// tables the opener can do without. 0 means only the current version.
	ReadableFrom int
	// Init, if set, runs once in Create after the migrations, in its own
	// transaction, before the file appears at its path: a database whose
	// creation was interrupted never exists half-initialised.
	Init func(conn *sqlite3.Conn) error
}

// Open opens an existing hibdisk database and brings its schema up to
// date. It checks the header first, so a file that is not SQLite, or
// belongs to another application, is refused without being opened.
//
// The connection uses WAL, synchronous=FULL (every commit syncs the WAL,
// so a committed transaction survives power loss) and a busy timeout.
func Open(path string, opts Options) (*sqlite3.Conn, error) {
	h, err := ReadHeader(path)
	if err != nil {
		return nil, err
	}
	if h.ApplicationID != ApplicationID {
		return nil, fmt.Errorf("open %q: application_id %#x, want %#x: %w", path, h.ApplicationID, ApplicationID, ErrOtherApplication)
	}
	if int(h.UserVersion) > len(opts.Migrations) {
		return nil, fmt.Errorf("open %q: schema version %d, this build knows up to %d: %w", path, h.UserVersion, len(opts.Migrations), ErrNewerSchema)
	}
	conn, err := openConn(path, opts, false)
	if err != nil {
		return nil, err
	}
	if err := prepareExisting(conn, path, opts); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func prepareExisting(conn *sqlite3.Conn, path string, opts Options) error {
	// The header read above may be stale in WAL mode; these are authoritative.
	appID, err := PragmaInt(conn, "application_id")
	if err != nil {
		return fmt.Errorf("open %q: %w", path, err)
	}
	if uint32(appID) != ApplicationID {
		return fmt.Errorf("open %q: application_id %#x, want %#x: %w", path, uint32(appID), ApplicationID, ErrOtherApplication)
	}
	if !opts.ReadOnly {
		if err := conn.Exec("PRAGMA journal_mode=WAL"); err != nil {
			return fmt.Errorf("open %q: set WAL: %w", path, err)
		}
	}
	version, err := PragmaInt(conn, "user_version")
	if err != nil {
		return fmt.Errorf("open %q: %w", path, err)
	}
	switch {
	case int(version) > len(opts.Migrations):
		return fmt.Errorf("open %q: schema version %d, this build knows up to %d: %w", path, version, len(opts.Migrations), ErrNewerSchema)
	case opts.ReadOnly && int(version) < len(opts.Migrations) && (opts.ReadableFrom == 0 || int(version) < opts.ReadableFrom):
		return fmt.Errorf("open %q: schema version %d, current is %d: %w", path, version, len(opts.Migrations), ErrNeedsMigration)
	case opts.ReadOnly:
		return nil // never migrate read-only; ReadableFrom allowed this version
	}
	return migrate(conn, path, int(version), opts.Migrations)
}

// Create creates a new database at path with the given page size,
// application_id and all migrations applied, and returns it open. It
// refuses an existing path with an error wrapping fs.ErrExist.
func Create(path string, opts Options) (*sqlite3.Conn, error) {
	if err := CreateFile(path, opts); err != nil {
		return nil, err
	}
	return Open(path, opts)
}

// CreateFile is Create without the open: the database is made, synced
// and in place at path when it returns, and nothing has it open.
func CreateFile(path string, opts Options) error {
	if opts.ReadOnly {
		return fmt.Errorf("create %q: read-only create makes no sense", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return &fs.PathError{Op: "create", Path: path, Err: fs.ErrExist}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("create %q: %w", path, err)
	}
	tmp, err := tempName(path)
	if err != nil {
		return fmt.Errorf("create %q: %w", path, err)
	}
	defer removeDatabaseFiles(tmp)
	if err := initialise(tmp, opts); err != nil {
		return fmt.Errorf("create %q: %w", path, err)
	}
	// A hard link is atomic and fails if path appeared meanwhile.
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("create %q: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		os.Remove(path)
		return fmt.Errorf("create %q: %w", path, err)
	}
	return nil
}

// initialise builds the database at tmp and closes it, which checkpoints
// and removes the WAL, then syncs it: one self-contained, synced file.
//
// Nobody else knows tmp, so its transactions need not be durable one by
// one: the connection runs with synchronous=OFF and the file is synced
// once, whole, after the close. (With a sync per migration, creating a
// layer took 15-17 ms, most of it in fdatasync.)
func initialise(tmp string, opts Options) (err error) {
	conn, err := openConn(tmp, opts, true)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := conn.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close: %w", cerr)
		}
		if err == nil {
			err = syncFile(tmp)
		}
	}()
	if err := conn.Exec("PRAGMA synchronous=OFF"); err != nil {
		return fmt.Errorf("set synchronous: %w", err)
	}
	if opts.PageSize != 0 {
		// page_size only takes effect before the first table exists.
		if err := conn.Exec(fmt.Sprintf("PRAGMA page_size=%d", opts.PageSize)); err != nil {
			return fmt.Errorf("set page_size: %w", err)
		}
	}
	if err := conn.Exec(fmt.Sprintf("PRAGMA application_id=%d", int32(ApplicationID))); err != nil {
		return fmt.Errorf("set application_id: %w", err)
	}
	if err := conn.Exec("PRAGMA journal_mode=WAL"); err != nil {
		return fmt.Errorf("set WAL: %w", err)
	}
	// One transaction for every migration and Init: nobody can see the
	// database half made, so one commit is as good as one each.
	tx, err := conn.BeginImmediate()
	if err != nil {
		return err
	}
	defer tx.End(&err)
	for i, m := range opts.Migrations {
		if err := applyMigration(conn, i+1, m); err != nil {
			return fmt.Errorf("migrate %q to version %d (%s): %w", tmp, i+1, m.Name, err)
		}
	}
	if opts.Init != nil {
		if err := opts.Init(conn); err != nil {
			return fmt.Errorf("initialise: %w", err)
		}
	}
	return nil
}

func migrate(conn *sqlite3.Conn, path string, from int, migrations []Migration) error {
	for i := from; i < len(migrations); i++ {
		m := migrations[i]
		version := i + 1
		if err := runMigration(conn, version, m); err != nil {
			return fmt.Errorf("migrate %q to version %d (%s): %w", path, version, m.Name, err)
		}
	}
	return nil
}

func runMigration(conn *sqlite3.Conn, version int, m Migration) (err error) {
	tx, err := conn.BeginImmediate()
	if err != nil {
		return err
	}
	defer tx.End(&err)
	// Re-read inside the write lock: another process may have migrated.
	current, err := PragmaInt(conn, "user_version")
	if err != nil {
		return err
	}
	if int(current) >= version {
		return nil
	}
	return applyMigration(conn, version, m)
}

// applyMigration applies m, the migration to version, and records it,
// in the caller's transaction.
func applyMigration(conn *sqlite3.Conn, version int, m Migration) error {
	if err := m.Apply(conn); err != nil {
		return err
	}
	if err := recordMigration(conn, version, m.Name); err != nil {
		return fmt.Errorf("record in the migrations table: %w", err)
	}
	return conn.Exec(fmt.Sprintf("PRAGMA user_version=%d", version))
}

// migrationsTable records applied migrations; see AppliedMigrations.
const migrationsTable = `CREATE TABLE IF NOT EXISTS migrations (
  version    INTEGER PRIMARY KEY,
  name       TEXT NOT NULL,
  applied_at TEXT NOT NULL
)`

func recordMigration(conn *sqlite3.Conn, version int, name string) error {
	if err := conn.Exec(migrationsTable); err != nil {
		return err
	}
	stmt, _, err := conn.Prepare(`INSERT INTO migrations (version, name, applied_at) VALUES (?1, ?2, ?3)
ON CONFLICT (version) DO UPDATE SET name = excluded.name, applied_at = excluded.applied_at`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	stmt.BindInt64(1, int64(version))
	stmt.BindText(2, name)
	stmt.BindText(3, time.Now().UTC().Format(time.RFC3339))
	return stmt.Exec()
}

// AppliedMigration is one row of the migrations table.
type AppliedMigration struct {
	Version   int
	Name      string
	AppliedAt time.Time
}

// AppliedMigrations returns the migrations table in version order. A
// database migrated before the table existed has no rows for those
// versions (and no table at all if nothing was migrated since): the
// result is then shorter than user_version.
func AppliedMigrations(conn *sqlite3.Conn) ([]AppliedMigration, error) {
	stmt, _, err := conn.Prepare(`SELECT version, name, applied_at FROM migrations ORDER BY version`)
	if err != nil {
		if errors.Is(err, sqlite3.ERROR) && strings.Contains(err.Error(), "no such table") {
			return nil, nil
		}
		return nil, fmt.Errorf("read the migrations table: %w", err)
	}
	defer stmt.Close()
	var out []AppliedMigration
	for stmt.Step() {
		at, _ := time.Parse(time.RFC3339, stmt.ColumnText(2))
		out = append(out, AppliedMigration{Version: stmt.ColumnInt(0), Name: stmt.ColumnText(1), AppliedAt: at})
	}
	if err := stmt.Err(); err != nil {
		return nil, fmt.Errorf("read the migrations table: %w", err)
	}
	return out, nil
}

func openConn(path string, opts Options, create bool) (*sqlite3.Conn, error) {
	mode := "rw"
	switch {
	case opts.ReadOnly:
		mode = "ro"
	case create:
		mode = "rwc"
	}
	// OpenContext is the only way to pass the memory limit, and it always
	// creates missing files unless told otherwise by a URI's mode.
	uri, err := FileURI(path, mode)
	if opts.ReadOnly {
		uri, err = ReadOnlyURI(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	if opts.Scratch {
		uri += "&" + scratchParam + "=1"
	}
	if opts.Stable && opts.ReadOnly {
		uri += "&" + stableParam + "=1"
	}
	return openURI(path, uri, opts)
}

// openURI opens the database at uri (named path in errors) and applies
// the connection pragmas.
func openURI(path, uri string, opts Options) (*sqlite3.Conn, error) {
	ctx := context.Background()
	if opts.MaxMemory > 0 {
		ctx = sqlite3.WithMaxMemory(ctx, opts.MaxMemory)
	}
	conn, err := sqlite3.OpenContext(ctx, uri)
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	pragmas := []string{
		"PRAGMA busy_timeout=10000",
		"PRAGMA synchronous=FULL",
	}
	if opts.CacheBytes > 0 {
		pragmas = append(pragmas, fmt.Sprintf("PRAGMA cache_size=%d", -opts.CacheBytes/1024))
	}
	if opts.MmapBytes > 0 {
		pragmas = append(pragmas, fmt.Sprintf("PRAGMA mmap_size=%d", opts.MmapBytes))
	}
	for _, p := range pragmas {
		if err := conn.Exec(p); err != nil {
			conn.Close()
			return nil, fmt.Errorf("open %q: %s: %w", path, p, err)
		}
	}
	return conn, nil
}

// cannotWriteBeside reports whether a read-only open of path must tell
// SQLite the file is immutable: on a read-only filesystem, or in a
// directory or of a file this process may not write, SQLite cannot make
// the -shm file WAL mode reads through, and fails to open at all (what
// `sqlite3 -readonly` avoids the same way). That is safe only when no WAL
// holds committed pages the main file lacks: such a layer is refused with
// what to do.
func cannotWriteBeside(path string) (bool, error) {
	if unix.Access(path, unix.W_OK) == nil && unix.Access(filepath.Dir(path), unix.W_OK) == nil {
		return false, nil
	}
	if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > 0 {
		if _, err := os.Stat(path + "-shm"); err == nil {
			return false, nil // SQLite reads an existing WAL index read-only
		}
		return false, fmt.Errorf("cannot be read where it is: its WAL (%s-wal) holds commits not in the file, and the file cannot be written; open it once where it is writable (any hibdisk command folds the WAL when it closes), or copy it with its -wal", path)
	}
	return true, nil
}

// ReadOnlyURI is the URI of a read-only connection to path, for
// connections opened without Open (datastore's own reader): FileURI with
// mode "ro", and immutable where SQLite could not make its -shm beside
// the file (cannotWriteBeside).
func ReadOnlyURI(path string) (string, error) {
	uri, err := FileURI(path, "ro")
	if err != nil {
		return "", err
	}
	immutable, err := cannotWriteBeside(path)
	if err != nil {
		return "", err
	}
	if immutable {
		uri += "&immutable=1"
	}
	return uri, nil
}

// FileURI turns a file name into an SQLite URI (https://sqlite.org/uri.html)
// with the given access mode ("ro", "rw", "rwc"), escaping characters that
// URIs reserve. Use it wherever SQLite takes a file name (ATTACH), since
// connections opened here interpret names as URIs.
func FileURI(path, mode string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: "mode=" + mode + "&vfs=" + vfsFor(abs)}
	return u.String(), nil
}

// PragmaInt returns the integer value of PRAGMA name.
func PragmaInt(conn *sqlite3.Conn, name string) (int64, error) {
	stmt, _, err := conn.Prepare("PRAGMA " + name)
	if err != nil {
		return 0, fmt.Errorf("PRAGMA %s: %w", name, err)
	}
	defer stmt.Close()
	if !stmt.Step() {
		if err := stmt.Err(); err != nil {
			return 0, fmt.Errorf("PRAGMA %s: %w", name, err)
		}
		return 0, fmt.Errorf("PRAGMA %s: no result", name)
	}
	return stmt.ColumnInt64(0), nil
}

func tempName(path string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".creating-"+hex.EncodeToString(b[:])), nil
}

func removeDatabaseFiles(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		os.Remove(p)
	}
}

// syncFile fsyncs the file at path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// scratchParam is the URI parameter that marks a Scratch database for
// the VFS.
const scratchParam = "hibdisk_scratch"

// stableParam is the URI parameter that marks a read-only connection to a
// database nobody writes while it is open (Options.Stable) for the VFS.
const stableParam = "hibdisk_stable"

// Prefault makes conn's SQLite touch n bytes of its memory and give them
// back to its allocator, which keeps them: SQLite's memory is the linear
// memory of a WebAssembly instance, which never shrinks, and the pages of
// it that were never touched cost a page fault each when SQLite first
// uses them. A transaction that fills the page cache with dirty pages
// first-touches about cache_size of memory (BenchmarkSaveRAM: 31,000
// faults, 0.35 s of a 0.85 s save of 128 MiB on these machines, where a
// fault costs ~11 µs); after Prefault of that much it takes under 100.
// Prefault itself costs those faults, so it belongs where nobody waits
// (a booting machine), not on a request's path. zeroblob(n/2) is
// expanded to n/2 zero bytes and the concatenation copies them into a
// second buffer: n bytes in two allocations, both freed when the
// statement ends.
func Prefault(conn *sqlite3.Conn, n int64) error {
	stmt, _, err := conn.Prepare("SELECT length(zeroblob(?1) || x'00')")
	if err != nil {
		return err
	}
	defer stmt.Close()
	stmt.BindInt64(1, n/2)
	if stmt.Step() {
		return stmt.Reset()
	}
	return stmt.Err()
}

// Sidecars is what SQLite leaves beside a WAL database a read-only
// connection read: it makes the -wal and -shm files to read through, and
// only a connection that may write removes them, when it is the last one
// to close the database. A read-only command (`hibdisk info`, a chain's
// parents) would leave them beside a layer that had none, to puzzle users
// who copy `*.db` as artifacts. NoteSidecars, before the read-only open,
// notes that there are none; Tidy, after that connection closed, has a
// writable connection of its own read and close the database, so that
// SQLite removes them. SQLite does so only when no other connection has
// the database open, so a layer someone else is using keeps them.
type Sidecars struct {
	path string // "" when there is nothing to tidy
}

// NoteSidecars notes whether path has no WAL holding frames (an empty
// -wal, left by an older hibdisk's read-only commands, holds nothing),
// and its directory lets SQLite make and remove the files.
func NoteSidecars(path string) Sidecars {
	if st, err := os.Lstat(path + "-wal"); err == nil && st.Size() > 0 || err != nil && !errors.Is(err, os.ErrNotExist) {
		return Sidecars{}
	}
	if immutable, err := cannotWriteBeside(path); err != nil || immutable {
		return Sidecars{} // read-only opens use immutable=1: nothing is made
	}
	return Sidecars{path: path}
}

// Tidy removes the -wal and -shm files made since NoteSidecars, if no
// other connection has the database open. Call it after closing every
// connection this process has to the database. It never fails: at worst
// the files stay.
func (s Sidecars) Tidy() {
	if s.path == "" {
		return
	}
	_, walErr := os.Lstat(s.path + "-wal")
	_, shmErr := os.Lstat(s.path + "-shm")
	if walErr != nil && shmErr != nil {
		return
	}
	uri, err := FileURI(s.path, "rw")
	if err != nil {
		return
	}
	conn, err := sqlite3.Open(uri)
	if err != nil {
		return
	}
	// A read opens the WAL; the close of the last connection then
	// checkpoints it (it holds nothing) and deletes both files.
	_, _ = PragmaInt(conn, "schema_version")
	conn.Close()
}
