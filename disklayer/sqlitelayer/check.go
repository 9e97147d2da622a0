package sqlitelayer

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/lock"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Report is the outcome of Check or Repair. Each entry is one line meant
// for people (`hibdisk check` prints them); the file is consistent when
// Problems is empty.
type Report struct {
	Path string
	// Problems found. After Repair: the problems that remain.
	Problems []string
	// Repairs lists what Repair changed, including data it had to drop.
	Repairs []string
	// Notes lists what was not verified and why.
	Notes []string
	// Leaks is the part of Problems that only wastes space: rows whose
	// repair loses nothing (all-zero data blobs, tombstones in a layer
	// without a parent). `hibdisk check` reports a layer whose only
	// problems are leaks the way qemu-img reports leaked clusters (exit
	// 3). Free pages are not leaks: SQLite reuses them.
	Leaks []string
}

// OK reports whether no problem was found (or remains, after Repair).
func (r *Report) OK() bool { return len(r.Problems) == 0 }

func (r *Report) problemf(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// String renders the report, one line per entry.
func (r *Report) String() string {
	var b strings.Builder
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "%s: problem: %s\n", r.Path, p)
	}
	for _, p := range r.Repairs {
		fmt.Fprintf(&b, "%s: repaired: %s\n", r.Path, p)
	}
	for _, p := range r.Notes {
		fmt.Fprintf(&b, "%s: note: %s\n", r.Path, p)
	}
	if r.OK() {
		fmt.Fprintf(&b, "%s: ok\n", r.Path)
	}
	return b.String()
}

// CheckOptions extend Check.
type CheckOptions struct {
	// VerifyExternalParent, if set, verifies a parent that is not a
	// hibdisk layer (raw, an image QEMU reads, an NBD export) against the
	// identity its child recorded: sqlitelayer reads none of them.
	// parentPath is resolved. Without it only a raw parent's size is
	// compared and the Report says so in Notes.
	VerifyExternalParent func(parentPath string, ref disklayer.ParentRef) error
}

// Check verifies the layer at path and reports every problem it finds:
// the database structure (PRAGMA integrity_check), the header, the layer
// row, every row of sectors and hibernate_blocks (blob length, key range,
// all-zero data, tombstones in a base layer) and the parent reference
// (reachable, same uuid and size). It reads the whole file.
//
// The error is for failing to check at all: the file cannot be read, is
// not a layer (ErrNotLayer) or is newer than this build
// (ErrUnsupportedVersion).
func Check(path string) (*Report, error) { return CheckWith(path, CheckOptions{}) }

// CheckWith is Check with options.
func CheckWith(path string, opts CheckOptions) (*Report, error) {
	r := &Report{Path: path}
	sidecars := store.NoteSidecars(path)
	conn, err := openForCheck(path, r, true)
	if err != nil || conn == nil {
		return r, err
	}
	defer sidecars.Tidy()
	defer conn.Close()
	info, ok := checkLayer(conn, r)
	if err := checkWALBelongs(path); err != nil {
		r.problemf("%v", err)
	}
	if ok && info.Parent != nil {
		checkParent(path, *info.Parent, opts, r)
	}
	return r, nil
}

// openForCheck opens the database for checking or repair, recording
// header-level problems in r. A nil conn with a nil error means the
// database cannot be opened and r says why.
func openForCheck(path string, r *Report, readOnly bool) (*sqlite3.Conn, error) {
	h, err := store.ReadHeader(path)
	if err != nil {
		return nil, fmt.Errorf("check %q: %w", path, mapStoreError(err))
	}
	if h.ApplicationID != store.ApplicationID {
		return nil, fmt.Errorf("check %q: application_id %#x: %w", path, h.ApplicationID, disklayer.ErrNotLayer)
	}
	if h.UserVersion > SchemaVersion {
		return nil, fmt.Errorf("check %q: schema version %d, this build knows %d: %w", path, h.UserVersion, SchemaVersion, disklayer.ErrUnsupportedVersion)
	}
	if err := checkFileLength(path); err != nil {
		r.problemf("%v", err)
	}
	conn, err := store.Open(path, store.Options{ReadOnly: readOnly, Migrations: schema.History, ReadableFrom: schema.ReadableFrom, CacheBytes: cacheBytes, MaxMemory: maxMemory})
	switch {
	case errors.Is(err, store.ErrNeedsMigration):
		r.problemf("schema version %d: the layer was never fully created", h.UserVersion)
		return nil, nil
	case errors.Is(err, store.ErrNewerSchema):
		return nil, fmt.Errorf("check %q: %w", path, mapStoreError(err))
	case errors.Is(err, sqlite3.CORRUPT), errors.Is(err, sqlite3.NOTADB):
		r.problemf("database cannot be opened: %v", err)
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("check %q: %w", path, mapStoreError(err))
	}
	return conn, nil
}

// checkLayer runs the checks that need only the layer's own file, the
// registered TableChecks included (Check, Repair and a Strict open all
// come through here). ok is false if the layer row could not be read, so
// the caller cannot rely on info.
func checkLayer(conn *sqlite3.Conn, r *Report) (info Info, ok bool) {
	checkIntegrity(conn, r)
	if v, err := store.PragmaInt(conn, "application_id"); err != nil {
		r.problemf("application_id unreadable: %v", err)
	} else if uint32(v) != store.ApplicationID {
		r.problemf("application_id is %#x, want %#x", uint32(v), store.ApplicationID)
	}
	if v, err := store.PragmaInt(conn, "user_version"); err != nil {
		r.problemf("user_version unreadable: %v", err)
	} else if v < SchemaVersion && v >= schema.ReadableFrom {
		r.Notes = append(r.Notes, fmt.Sprintf("schema version %d is older than %d: opening the layer writable (or hibdisk check --repair) migrates it", v, SchemaVersion))
	} else if v != SchemaVersion {
		r.problemf("user_version is %d, want %d", v, SchemaVersion)
	}
	info, ok = scanLayerRow(conn, func(p string) { r.problemf("layer row: %s", p) })
	if !ok || !disklayer.ValidSectorSize(info.SectorSize) {
		r.Notes = append(r.Notes, "sectors, hibernate_blocks and the other packages' tables not checked: no valid layer row")
		return info, false
	}
	for _, t := range layerTables(info) {
		for _, q := range tableChecks(t) {
			keys, n, err := queryKeys(conn, q.sql, t)
			if err != nil {
				r.problemf("%s: cannot check %s: %v", t.table, q.what, mapStoreError(err))
				continue
			}
			if n > 0 {
				r.problemf("%s: %s", t.table, describeKeys(n, q.what, t.key, keys))
				if !q.lost && q.repair != "" {
					r.Leaks = append(r.Leaks, r.Problems[len(r.Problems)-1])
				}
			}
		}
	}
	if err := checkSummary(conn, func(p string) { r.problemf("%s", p) }); err != nil {
		r.problemf("allocation summary: cannot check: %v", mapStoreError(err))
	}
	runTableChecks(conn, info, r)
	return info, true
}

func checkIntegrity(conn *sqlite3.Conn, r *Report) {
	stmt, _, err := conn.Prepare("PRAGMA integrity_check(100)")
	if err != nil {
		r.problemf("integrity_check: %v", err)
		return
	}
	defer stmt.Close()
	for stmt.Step() {
		if line := stmt.ColumnText(0); line != "ok" {
			r.problemf("integrity_check: %s", line)
		}
	}
	if err := stmt.Err(); err != nil {
		r.problemf("integrity_check: %v", err)
	}
}

// tableSpec describes one block table for checking.
type tableSpec struct {
	table, key string
	blockSize  int
	blocks     int64 // valid keys are [0, blocks)
	hasParent  bool
}

func layerTables(info Info) []tableSpec {
	ss := info.SectorSize
	return []tableSpec{
		{"sectors", "sector", ss, info.DiskSize / int64(ss), info.Parent != nil},
		{"hibernate_blocks", "block", ss, HibernateSize / int64(ss), info.Parent != nil},
	}
}

// rowCheck is one invariant over a table's rows: sql selects the keys of
// the rows that break it, repair fixes them.
type rowCheck struct {
	what     string // the problem, in the plural: "rows past the end"
	sql      string
	repair   string // a statement with the same parameters; "" = not repairable
	repaired string // what the repair did
	lost     bool   // the repair drops data
}

// bind binds the parameters a check may use: :block_size and :blocks.
func (t tableSpec) bind(stmt *sqlite3.Stmt) {
	if i := stmt.BindIndex(":block_size"); i > 0 {
		stmt.BindInt64(i, int64(t.blockSize))
	}
	if i := stmt.BindIndex(":blocks"); i > 0 {
		stmt.BindInt64(i, t.blocks)
	}
}

func tableChecks(t tableSpec) []rowCheck {
	k, tab := t.key, t.table
	checks := []rowCheck{
		{
			what:     "rows past the end of the " + fmt.Sprint(t.blocks) + "-block table (or negative)",
			sql:      "SELECT " + k + " FROM " + tab + " WHERE (" + k + " < 0 OR " + k + " >= :blocks) ORDER BY " + k,
			repair:   "DELETE FROM " + tab + " WHERE (" + k + " < 0 OR " + k + " >= :blocks)",
			repaired: "deleted rows past the end (their data is lost)",
			lost:     true,
		},
		{
			what:     "blobs that are not exactly one block long",
			sql:      "SELECT " + k + " FROM " + tab + " WHERE data IS NOT NULL AND (typeof(data) <> 'blob' OR length(data) <> :block_size) ORDER BY " + k,
			repair:   "DELETE FROM " + tab + " WHERE data IS NOT NULL AND (typeof(data) <> 'blob' OR length(data) <> :block_size)",
			repaired: "dropped blobs of the wrong length (their data is lost; the parent, or zeros, show through)",
			lost:     true,
		},
		{
			what: "all-zero data blobs (should be tombstones or no rows)",
			sql:  "SELECT " + k + " FROM " + tab + " WHERE typeof(data) = 'blob' AND length(data) = :block_size AND data = zeroblob(:block_size) ORDER BY " + k,
		},
	}
	if t.hasParent {
		checks[2].repair = "UPDATE " + tab + " SET data = NULL WHERE typeof(data) = 'blob' AND length(data) = :block_size AND data = zeroblob(:block_size)"
		checks[2].repaired = "turned all-zero data blobs into tombstones"
	} else {
		checks[2].repair = "DELETE FROM " + tab + " WHERE typeof(data) = 'blob' AND length(data) = :block_size AND data = zeroblob(:block_size)"
		checks[2].repaired = "deleted all-zero data blobs (a base layer reads zeros without rows)"
		checks = append(checks, rowCheck{
			what:     "tombstones in a layer without a parent",
			sql:      "SELECT " + k + " FROM " + tab + " WHERE data IS NULL ORDER BY " + k,
			repair:   "DELETE FROM " + tab + " WHERE data IS NULL",
			repaired: "deleted tombstones of a layer without a parent",
		})
	}
	return checks
}

// maxKeysShown bounds how many keys a report line lists.
const maxKeysShown = 8

// queryKeys runs sql and returns the first maxKeysShown keys and the count.
func queryKeys(conn *sqlite3.Conn, sql string, t tableSpec) (keys []int64, n int64, err error) {
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return nil, 0, err
	}
	defer stmt.Close()
	t.bind(stmt)
	for stmt.Step() {
		if n < maxKeysShown {
			keys = append(keys, stmt.ColumnInt64(0))
		}
		n++
	}
	return keys, n, stmt.Err()
}

func describeKeys(n int64, what, key string, keys []int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s (%s", n, what, key)
	for i, k := range keys {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %d", k)
	}
	if n > int64(len(keys)) {
		b.WriteString(", …")
	}
	b.WriteString(")")
	return b.String()
}

// checkParent verifies that the parent is reachable and is the file the
// layer was created over.
func checkParent(childPath string, ref disklayer.ParentRef, opts CheckOptions, r *Report) {
	parentPath := ref.ResolvePath(childPath)
	if err := VerifyParent(childPath, ref); err != nil {
		r.problemf("%v", err)
		return
	}
	if ref.Format == disklayer.FormatHibdisk {
		return
	}
	if opts.VerifyExternalParent == nil {
		r.Notes = append(r.Notes, fmt.Sprintf("%s parent %q: identity not compared", ref.Format, parentPath))
		return
	}
	if err := opts.VerifyExternalParent(parentPath, ref); err != nil {
		r.problemf("%s parent %q: %v", ref.Format, parentPath, err)
	}
}

// VerifyParent checks that the parent ref of the layer at childPath is
// reachable and matches: a hibdisk parent by uuid and size, a raw parent
// by size (its digest is rawlayer's to compare), an openvmm parent only
// by being there (its size is in its own meta row). A mismatch or a missing
// parent wraps ErrParentMismatch and names both sides.
func VerifyParent(childPath string, ref disklayer.ParentRef) error {
	parentPath := ref.ResolvePath(childPath)
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("layer %q: parent %q: %s: %w", childPath, parentPath, fmt.Sprintf(format, args...), disklayer.ErrParentMismatch)
	}
	if ref.Format == disklayer.FormatNBD || ref.Format == disklayer.FormatS3 {
		return nil // remote: opening the chain connects to it and verifies it
	}
	st, err := os.Stat(parentPath)
	if err != nil {
		return mismatch("unreachable: %v", err)
	}
	if disklayer.IsQEMUFormat(ref.Format) || ref.Format == disklayer.FormatOpenVMM {
		return nil // its size is the guest's, not the file's: VerifyExternalParent
	}
	switch ref.Format {
	case disklayer.FormatRaw:
		// A raw image reads in 512-byte sectors (rawlayer's default), a
		// partial last one padded with zeros: that is the size recorded.
		if rounded := (st.Size() + rawSectorSize - 1) / rawSectorSize * rawSectorSize; rounded != ref.Size {
			return mismatch("raw image is %d bytes, the layer was created over %d bytes", st.Size(), ref.Size)
		}
		return nil
	case disklayer.FormatHibdisk:
		parent, err := Open(parentPath, OpenOptions{ReadOnly: true})
		if err != nil {
			return mismatch("cannot open: %v", err)
		}
		info := parent.Info()
		parent.Close()
		if info.UUID != ref.UUID {
			return mismatch("uuid is %s, the layer was created over %s", info.UUID, ref.UUID)
		}
		if info.DiskSize != ref.Size {
			return mismatch("size is %d bytes, the layer was created over %d bytes", info.DiskSize, ref.Size)
		}
		if ref.Generation != 0 && info.Generation != ref.Generation {
			return mismatch("generation is %d, the layer was created over generation %d: the parent's content changed since (`hibdisk rebase -u -b PARENT LAYER` accepts the change if it is intended)", info.Generation, ref.Generation)
		}
		return nil
	}
	return mismatch("unknown format %q", ref.Format)
}

// RepairOptions say how far Repair may go.
type RepairOptions struct {
	// Force allows the fixes that destroy sector data: dropping rows past
	// the end and blobs of the wrong length. Without it they are listed
	// as notes and left in place, since a damaged layer row (a wrong
	// sector_size or disk_size) makes good data look like either.
	Force bool
}

// Repair is RepairWith without Force.
func Repair(path string) (*Report, error) { return RepairWith(path, RepairOptions{}) }

// RepairWith fixes what can be fixed without guessing, in one
// transaction. The layer row is repaired first from what the blobs agree
// on (a sector_size that every data blob contradicts), never the blobs
// from the row. All-zero blobs become tombstones or no rows, tombstones in
// a base layer are dropped, and a layer row value that follows from the
// others is filled in. Rows past the end and blobs of the wrong length
// are dropped only with opts.Force (the Report names them as lost data);
// without it the Report's Notes say what --force would drop. A database
// whose structure is damaged (integrity_check fails) is not touched. The
// returned Report's Problems are those that remain afterwards.
func RepairWith(path string, opts RepairOptions) (*Report, error) {
	// Repair is a writer: refused while anyone else writes the layer or
	// holds it stable, and nobody else may start writing meanwhile.
	held, err := lock.Acquire(path, lock.Exclusive)
	if err != nil {
		return nil, fmt.Errorf("repair %q: %w", path, err)
	}
	defer held.Release()
	// A foreign WAL is not repaired: a writable open would fold it in.
	if err := checkWALBelongs(path); err != nil {
		r := &Report{Path: path}
		r.problemf("%v", err)
		r.Notes = append(r.Notes, "nothing was repaired: move the -wal file away first")
		return r, nil
	}
	before, err := Check(path)
	if err != nil {
		return before, err
	}
	if before.OK() && !needsMigration(path) {
		return before, nil
	}
	for _, p := range before.Problems {
		if strings.HasPrefix(p, "integrity_check") || strings.HasPrefix(p, "database cannot be opened") || strings.Contains(p, "truncated") {
			before.Notes = append(before.Notes, "the database structure is damaged: nothing was repaired (restore it from a copy, or export what reads back)")
			return before, nil
		}
	}
	r := &Report{Path: path}
	conn, err := openForCheck(path, r, false)
	if err != nil || conn == nil {
		return r, err
	}
	err = repairLayer(conn, r, opts.Force)
	if cerr := conn.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("repair %q: close: %w", path, cerr)
	}
	if err != nil {
		return r, err
	}
	after, err := Check(path)
	if err != nil {
		return r, err
	}
	after.Repairs = r.Repairs
	after.Notes = append(after.Notes, r.Notes...)
	return after, nil
}

func repairLayer(conn *sqlite3.Conn, r *Report, force bool) (err error) {
	tx, err := conn.BeginImmediate()
	if err != nil {
		return fmt.Errorf("repair %q: %w", r.Path, err)
	}
	defer tx.End(&err)
	if err := repairLayerRow(conn, r); err != nil {
		return fmt.Errorf("repair %q: layer row: %w", r.Path, err)
	}
	info, ok := scanLayerRow(conn, func(string) {})
	if !ok || !disklayer.ValidSectorSize(info.SectorSize) {
		return nil // nothing below can be repaired without a sector size
	}
	for _, t := range layerTables(info) {
		for _, q := range tableChecks(t) {
			if q.repair == "" {
				continue
			}
			keys, n, err := queryKeys(conn, q.sql, t)
			if err != nil {
				return fmt.Errorf("repair %q %s: %w", r.Path, t.table, err)
			}
			if n == 0 {
				continue
			}
			if q.lost && !force {
				r.Notes = append(r.Notes, fmt.Sprintf("%s: not repaired: %s; this would destroy data, so it needs --force (first check that sector_size and disk_size in the layer row are right)",
					t.table, describeKeys(n, q.what, t.key, keys)))
				continue
			}
			stmt, _, err := conn.Prepare(q.repair)
			if err != nil {
				return fmt.Errorf("repair %q %s: %w", r.Path, t.table, err)
			}
			t.bind(stmt)
			err = stmt.Exec()
			stmt.Close()
			if err != nil {
				return fmt.Errorf("repair %q %s: %w", r.Path, t.table, err)
			}
			r.Repairs = append(r.Repairs, fmt.Sprintf("%s: %s", t.table, describeKeys(n, q.repaired, t.key, keys)))
		}
	}
	return repairSummary(conn, r)
}

// repairSummary drops an allocation summary that disagrees with the rows
// (the layer is then mapped from its rows, as one without a summary):
// nothing of the disk is lost.
func repairSummary(conn *sqlite3.Conn, r *Report) error {
	wrong := 0
	if err := checkSummary(conn, func(string) { wrong++ }); err != nil {
		return fmt.Errorf("repair %q: allocation summary: %w", r.Path, err)
	}
	if wrong == 0 {
		return nil
	}
	if err := conn.Exec("DELETE FROM allocation; UPDATE layer SET allocation_generation = NULL"); err != nil {
		return fmt.Errorf("repair %q: allocation summary: %w", r.Path, err)
	}
	r.Repairs = append(r.Repairs, "allocation summary: dropped (it disagreed with the sectors table; the layer is mapped from its rows)")
	return nil
}

// repairLayerRow fills in layer row values that follow from the others,
// and repairs a sector_size that every data blob contradicts.
func repairLayerRow(conn *sqlite3.Conn, r *Report) error {
	if err := repairSectorSize(conn, r); err != nil {
		return err
	}
	fixes := []struct{ sql, what string }{
		{"UPDATE layer SET parent_format = 'hibdisk' WHERE parent_format IS NULL AND parent_path IS NOT NULL AND parent_uuid IS NOT NULL AND parent_digest IS NULL",
			"set the missing parent_format to 'hibdisk' (the parent is identified by uuid)"},
		{"UPDATE layer SET parent_format = 'raw' WHERE parent_format IS NULL AND parent_path IS NOT NULL AND parent_uuid IS NULL AND parent_digest IS NOT NULL",
			"set the missing parent_format to 'raw' (the parent is identified by digest)"},
		{"UPDATE layer SET disk_size = (disk_size + sector_size - 1) / sector_size * sector_size WHERE typeof(disk_size) = 'integer' AND disk_size > 0 AND sector_size IN (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) AND disk_size % sector_size <> 0",
			"rounded disk_size up to a whole number of sectors"},
	}
	for _, f := range fixes {
		if err := conn.Exec(f.sql); err != nil {
			return err
		}
		if conn.Changes() > 0 {
			r.Repairs = append(r.Repairs, "layer row: "+f.what)
		}
	}
	return nil
}

// repairSectorSize sets sector_size to the length every data blob has,
// when all of them agree on one valid size that differs from the row's
// and the disk size is a multiple of it: then the row is what is damaged,
// not the blobs. Blobs that disagree among themselves leave the row alone.
func repairSectorSize(conn *sqlite3.Conn, r *Report) error {
	stmt, _, err := conn.Prepare(`SELECT length(data), count(*) FROM (
  SELECT data FROM sectors WHERE typeof(data) = 'blob'
  UNION ALL SELECT data FROM hibernate_blocks WHERE typeof(data) = 'blob')
 GROUP BY 1`)
	if err != nil {
		return err
	}
	var lengths []int64
	var blobs int64
	for stmt.Step() {
		lengths = append(lengths, stmt.ColumnInt64(0))
		blobs += stmt.ColumnInt64(1)
	}
	if err := stmt.Close(); err != nil {
		return err
	}
	if len(lengths) != 1 || !disklayer.ValidSectorSize(int(lengths[0])) {
		return nil
	}
	size := lengths[0]
	var old, diskSize int64
	row, _, err := conn.Prepare("SELECT sector_size, disk_size FROM layer WHERE id = 1")
	if err != nil {
		return err
	}
	if row.Step() {
		old, diskSize = row.ColumnInt64(0), row.ColumnInt64(1)
	}
	if err := row.Close(); err != nil {
		return err
	}
	if old == size {
		return nil
	}
	if diskSize <= 0 || diskSize%size != 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("layer row: sector_size is %d but all %d data blobs are %d bytes long; disk_size %d is not a multiple of %d, so the row was left alone", old, blobs, size, diskSize, size))
		return nil
	}
	if err := conn.Exec(fmt.Sprintf("UPDATE layer SET sector_size = %d WHERE id = 1", size)); err != nil {
		return err
	}
	r.Repairs = append(r.Repairs, fmt.Sprintf("layer row: sector_size was %d, but all %d data blobs are %d bytes long: set sector_size to %d", old, blobs, size, size))
	return nil
}

// rawSectorSize is rawlayer.DefaultSectorSize, the unit a raw parent's
// size is rounded up to (this package does not import rawlayer).
const rawSectorSize = 512
