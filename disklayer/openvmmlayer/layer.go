package openvmmlayer

import (
	"errors"
	"fmt"
	"iter"
	"os"
	"sync"
	"syscall"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Layer is one OpenVMM disklayer_sqlite file: read-only from Open, a
// writable disklayer.Disk from Create. One connection serves every
// goroutine, under mu.
type Layer struct {
	path     string
	info     Info
	readOnly bool

	mu     sync.Mutex
	conn   *sqlite3.Conn // nil once closed
	read   *sqlite3.Stmt // rows of a sector range, with their data
	kinds  *sqlite3.Stmt // rows of a sector range, without their data
	writer *writer       // nil when read-only
}

var (
	_ disklayer.Layer = (*Layer)(nil)
	_ disklayer.Disk  = (*Layer)(nil)
)

const (
	sqlRead = `SELECT sector, data FROM sectors WHERE sector >= ?1 AND sector < ?2 ORDER BY sector`
	// length() of a blob does not read it.
	sqlKinds = `SELECT sector, typeof(data), length(data) FROM sectors WHERE sector >= ?1 AND sector < ?2 ORDER BY sector LIMIT ?3`
)

// Open opens the OpenVMM file at path read-only. See the package
// documentation for what it refuses and for the -wal and -shm files.
func Open(path string) (*Layer, error) {
	l, err := open(path)
	if err != nil {
		return nil, fmt.Errorf("open OpenVMM layer %q: %w", path, err)
	}
	return l, nil
}

func open(path string) (*Layer, error) {
	if _, err := store.ReadHeader(path); err != nil {
		if errors.Is(err, store.ErrNotSQLite) {
			return nil, fmt.Errorf("%w: %w", err, disklayer.ErrNotLayer)
		}
		return nil, err
	}
	uri, createdShm, err := readOnlyURI(path)
	if err != nil {
		return nil, err
	}
	conn, err := sqlite3.Open(uri)
	if err == nil {
		err = conn.Exec("PRAGMA busy_timeout=10000")
	}
	if err != nil {
		closeConn(conn)
		return nil, mapError(err)
	}
	l, err := newLayer(conn, path, true)
	if err == nil && createdShm {
		// SQLite made the -shm when it first read (newLayer).
		err = giveOwnership(path+"-shm", path)
	}
	if err != nil {
		if l != nil {
			l.closeStatements()
		}
		closeConn(conn)
		return nil, err
	}
	return l, nil
}

// readOnlyURI picks how to open path read-only without leaving files
// that were not there. With no WAL beside the file (none, or an empty
// one without a -shm: nobody has it open in WAL mode), the file is the
// whole database, and immutable=1 reads it with no -wal or -shm created.
// With a WAL, it is read through it; SQLite then needs the -shm, and
// makes one if it is missing (createdShm).
func readOnlyURI(path string) (uri string, createdShm bool, err error) {
	uri, err = store.FileURI(path, "ro")
	if err != nil {
		return "", false, err
	}
	wal, walErr := os.Stat(path + "-wal")
	_, shmErr := os.Stat(path + "-shm")
	hasShm := shmErr == nil
	if (walErr != nil || wal.Size() == 0) && !hasShm {
		return uri + "&immutable=1", false, nil
	}
	return uri, !hasShm, nil
}

// giveOwnership gives the -shm file SQLite made for a reader the owner
// and mode of the database, as SQLite's own Unix VFS does when it runs as
// root, so that OpenVMM, run by the file's owner, can still use it.
func giveOwnership(shm, db string) error {
	st, err := os.Stat(db)
	if err != nil {
		return err
	}
	if err := os.Chmod(shm, st.Mode().Perm()); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
		return os.Lchown(shm, int(sys.Uid), int(sys.Gid))
	}
	return nil
}

func closeConn(conn *sqlite3.Conn) {
	if conn != nil {
		_ = conn.Close() // the error that made us close is the one to report
	}
}

// newLayer reads and validates the meta row and prepares the reads.
func newLayer(conn *sqlite3.Conn, path string, readOnly bool) (*Layer, error) {
	info, err := readMeta(conn)
	if err != nil {
		return nil, err
	}
	if err := checkSectorRange(conn, info); err != nil {
		return nil, err
	}
	l := &Layer{path: path, info: info, readOnly: readOnly, conn: conn}
	if l.read, _, err = conn.Prepare(sqlRead); err == nil {
		l.kinds, _, err = conn.Prepare(sqlKinds)
	}
	if err != nil {
		l.closeStatements()
		return nil, fmt.Errorf("the sectors table is not OpenVMM's (%v): %w", err, disklayer.ErrNotLayer)
	}
	return l, nil
}

func (l *Layer) closeStatements() {
	for _, s := range []*sqlite3.Stmt{l.read, l.kinds} {
		if s != nil {
			_ = s.Close() // a finalize error repeats an earlier step's
		}
	}
}

// Path is the file's name as opened.
func (l *Layer) Path() string { return l.path }

// Info is the layer's meta row.
func (l *Layer) Info() Info { return l.info }

// Size is the number of bytes the guest sees: sector_count sectors.
func (l *Layer) Size() int64 { return l.info.Size() }

// SectorSize is the meta row's sector_size.
func (l *Layer) SectorSize() int { return l.info.SectorSize }

// check validates an access and that the layer is open; mu is held.
func (l *Layer) check(op string, off, length int64) error {
	if l.conn == nil {
		return fmt.Errorf("%s %q: %w", op, l.path, disklayer.ErrClosed)
	}
	if err := disklayer.CheckRange(off, length, l.Size()); err != nil {
		return fmt.Errorf("%s %q: %w", op, l.path, err)
	}
	return nil
}

// ReadAt reads the layer's own content: rows' data, zeros for NULL rows
// and for sectors without a row.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := l.readLocked(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readLocked fills p from the rows covering [off, off+len(p)); mu is held.
func (l *Layer) readLocked(p []byte, off int64) error {
	clear(p)
	if len(p) == 0 {
		return nil
	}
	ss, end := int64(l.info.SectorSize), off+int64(len(p))
	stmt := l.read
	stmt.BindInt64(1, off/ss)
	stmt.BindInt64(2, (end+ss-1)/ss)
	for stmt.Step() {
		sector := stmt.ColumnInt64(0)
		data := stmt.ColumnRawBlob(1)
		if err := l.checkRow(sector, stmt.ColumnType(1), int64(len(data))); err != nil {
			_ = stmt.Reset() // the row's error is the one to report
			return fmt.Errorf("read %q: %w", l.path, err)
		}
		if data != nil {
			start, stop := max(sector*ss, off), min(sector*ss+ss, end)
			copy(p[start-off:stop-off], data[start-sector*ss:stop-sector*ss])
		}
	}
	if err := stmt.Reset(); err != nil {
		return fmt.Errorf("read %q at %d: %w", l.path, off, mapError(err))
	}
	return nil
}

// checkRow refuses a row OpenVMM would refuse to read (BlobSizeError, or
// a value that is not a blob).
func (l *Layer) checkRow(sector int64, typ sqlite3.Datatype, length int64) error {
	if typ == sqlite3.NULL || (typ == sqlite3.BLOB && length == int64(l.info.SectorSize)) {
		return nil
	}
	return fmt.Errorf("sector %d holds %d bytes (%s), want %d bytes or NULL: %w", sector, length, typ, l.info.SectorSize, disklayer.ErrCorrupt)
}

// extentBatch bounds the rows one Extents query reads while holding mu.
const extentBatch = 4096

// Extents yields the allocation of [off, off+length): Absent where there
// is no row, Zero for NULL rows, Data for rows with data.
func (l *Layer) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	return func(yield func(disklayer.Extent, error) bool) {
		l.mu.Lock()
		err := l.check("extents", off, length)
		l.mu.Unlock()
		if err != nil {
			yield(disklayer.Extent{}, err)
			return
		}
		m := merger{yield: yield, end: off + length, next: off}
		ss := int64(l.info.SectorSize)
		for first := off / ss; m.next < m.end && !m.stopped; {
			rows, err := l.rowKinds(first, (m.end+ss-1)/ss)
			if err != nil {
				yield(disklayer.Extent{}, err)
				return
			}
			for _, r := range rows {
				m.add(r.sector*ss, ss, r.kind)
			}
			if len(rows) < extentBatch {
				break
			}
			first = rows[len(rows)-1].sector + 1
		}
		m.add(m.end, 0, disklayer.Absent)
		m.flush()
	}
}

type rowKind struct {
	sector int64
	kind   disklayer.ExtentKind
}

// rowKinds reads up to extentBatch rows of sectors [first, end).
func (l *Layer) rowKinds(first, end int64) ([]rowKind, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return nil, fmt.Errorf("extents %q: %w", l.path, disklayer.ErrClosed)
	}
	stmt := l.kinds
	stmt.BindInt64(1, first)
	stmt.BindInt64(2, end)
	stmt.BindInt64(3, extentBatch)
	var rows []rowKind
	for stmt.Step() {
		r := rowKind{sector: stmt.ColumnInt64(0), kind: disklayer.Data}
		typ := sqliteType(stmt.ColumnText(1))
		if err := l.checkRow(r.sector, typ, stmt.ColumnInt64(2)); err != nil {
			_ = stmt.Reset() // the row's error is the one to report
			return nil, fmt.Errorf("extents %q: %w", l.path, err)
		}
		if typ == sqlite3.NULL {
			r.kind = disklayer.Zero
		}
		rows = append(rows, r)
	}
	if err := stmt.Reset(); err != nil {
		return nil, fmt.Errorf("extents %q: %w", l.path, mapError(err))
	}
	return rows, nil
}

// sqliteType turns typeof()'s answer into a Datatype.
func sqliteType(name string) sqlite3.Datatype {
	switch name {
	case "null":
		return sqlite3.NULL
	case "blob":
		return sqlite3.BLOB
	case "integer":
		return sqlite3.INTEGER
	case "real":
		return sqlite3.FLOAT
	}
	return sqlite3.TEXT
}

// merger turns rows into clipped, merged extents, filling the gaps
// between them with Absent.
type merger struct {
	yield   func(disklayer.Extent, error) bool
	end     int64 // of the range
	next    int64 // where the next extent starts
	pending disklayer.Extent
	stopped bool
}

// add covers [off, off+n) with kind (clipped to the range), after an
// Absent run for any gap before it.
func (m *merger) add(off, n int64, kind disklayer.ExtentKind) {
	if off > m.next {
		m.emit(disklayer.Extent{Off: m.next, Len: min(off, m.end) - m.next, Kind: disklayer.Absent})
	}
	start, stop := max(off, m.next), min(off+n, m.end)
	if stop > start {
		m.emit(disklayer.Extent{Off: start, Len: stop - start, Kind: kind})
	}
}

func (m *merger) emit(e disklayer.Extent) {
	if e.Len <= 0 {
		return
	}
	m.next = e.End()
	if m.pending.Len > 0 && m.pending.Kind == e.Kind && m.pending.End() == e.Off {
		m.pending.Len += e.Len
		return
	}
	m.flush()
	m.pending = e
}

func (m *merger) flush() {
	if m.pending.Len > 0 && !m.stopped {
		m.stopped = !m.yield(m.pending, nil)
	}
	m.pending = disklayer.Extent{}
}

// Close releases the layer; a writable one is flushed and its WAL
// folded into the file first. Using a closed layer returns ErrClosed.
func (l *Layer) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return fmt.Errorf("close %q: %w", l.path, disklayer.ErrClosed)
	}
	var errs []error
	if l.writer != nil {
		errs = append(errs, l.writer.finish(l.conn))
	}
	l.closeStatements()
	errs = append(errs, l.conn.Close())
	l.conn = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close %q: %w", l.path, mapError(err))
	}
	return nil
}
