package hibfile

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Check verifies the hibernate metadata of the layer at path (its own
// rows; the chain below is not opened) and reports every problem: foreign
// keys and orphan rows, each snapshot's total_processes against its rows,
// every blob and register range inside [0, blob_size) of its snapshot and
// of the hibernate file and not overlapping another, valid sizes, states
// and timestamps, and a rooted (acyclic) process tree. The error is for
// failing to check at all: the file is not a layer, cannot be opened, or
// is corrupt.
//
// This is `hibdisk hib check`. The same check is registered with
// sqlitelayer (checkTables), so every check of a layer file runs it too:
// `hibdisk check`, diffdisk.Check, a Strict open.
func Check(path string) (*sqlitelayer.Report, error) {
	r := &sqlitelayer.Report{Path: path}
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		return r, fmt.Errorf("check hibernate metadata of %q: %w", path, err)
	}
	defer f.Close()
	info := f.Info() // before View: both take the layer's lock
	err = f.View("check hibernate metadata", func(conn *sqlite3.Conn) error {
		return sqlitelayer.RunTableCheck(conn, info, tableCheck, r)
	})
	if err != nil {
		return r, fmt.Errorf("check hibernate metadata of %q: %w", path, err)
	}
	return r, nil
}

// tableCheck is Check on a connection, registered with sqlitelayer.
var tableCheck = sqlitelayer.TableCheck{
	Name:   "hibernate metadata",
	Tables: []string{"hibernate_snapshot", "hibernate_processes", "hibernate_memory_map", "hibernate_files", "hibernate_signals"},
	Check:  checkTables,
}

func checkTables(conn *sqlite3.Conn, info sqlitelayer.Info, r *sqlitelayer.TableReport) error {
	ok, err := hasTables(conn)
	switch {
	case errors.Is(err, ErrNeedsMigration):
		r.Problemf("the seed's v0 tables are not migrated yet (hibdisk check --repair migrates them)")
		return nil
	case err != nil:
		return err
	case !ok:
		r.Notef("schema version 1, no hibernate tables")
		return nil
	}
	return checkMetadata(conn, info.UUID, r.Problemf)
}

// foreignKeyProblems lists the rows that break a foreign key, per table.
func foreignKeyProblems(conn *sqlite3.Conn) (map[string]int64, error) {
	out := map[string]int64{}
	err := rows(conn, `SELECT "table" FROM pragma_foreign_key_check WHERE "table" LIKE 'hibernate_%'`, func(s *sqlite3.Stmt) {
		out[s.ColumnText(0)]++
	})
	return out, err
}

func checkMetadata(conn *sqlite3.Conn, layerUUID string, problem func(string, ...any)) error {
	fk, err := foreignKeyProblems(conn)
	if err != nil {
		return err
	}
	for _, t := range slices.Sorted(mapKeys(fk)) {
		problem("%s: %d rows without their snapshot or process (orphans)", t, fk[t])
	}
	var snaps []Snapshot
	var badTime []string
	if err := rows(conn, `SELECT `+snapshotColumns+` FROM hibernate_snapshot ORDER BY snapshot_id`, func(st *sqlite3.Stmt) {
		s, err := scanSnapshot(st)
		if err != nil {
			badTime = append(badTime, err.Error())
		}
		snaps = append(snaps, s)
	}); err != nil {
		return err
	}
	for _, b := range badTime {
		problem("%s", b)
	}
	for _, s := range snaps {
		if err := checkSnapshot(conn, s, layerUUID, problem); err != nil {
			return err
		}
	}
	return nil
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func checkSnapshot(conn *sqlite3.Conn, s Snapshot, layerUUID string, problem func(string, ...any)) error {
	id := s.ID
	where := fmt.Sprintf("snapshot %d", id)
	if s.LayerUUID != layerUUID {
		problem("%s: layer_uuid %s, but this layer is %s (rows copied from another layer?)", where, s.LayerUUID, layerUUID)
	}
	if s.Status != StatusComplete && s.Status != StatusPartial {
		problem("%s: status %q is neither %q nor %q", where, s.Status, StatusComplete, StatusPartial)
	}
	n, err := queryInt(conn, `SELECT count(*) FROM hibernate_processes WHERE snapshot_id = ?1`, id)
	if err != nil {
		return err
	}
	if n != s.TotalProcesses {
		problem("%s: total_processes is %d, but %d processes are stored", where, s.TotalProcesses, n)
	}
	var procs []Process
	if err := rows(conn, `SELECT `+processColumns+` FROM hibernate_processes WHERE snapshot_id = ?1 ORDER BY pid`, func(st *sqlite3.Stmt) {
		procs = append(procs, scanProcess(st, 0))
	}, id); err != nil {
		return err
	}
	if _, err := Tree(procs); err != nil {
		problem("%s: %v (no root)", where, err)
	}
	var ranges []blobRange
	for _, p := range procs {
		if p.RegistersOffset != nil {
			ranges = append(ranges, blobRange{disklayer.Range{Off: *p.RegistersOffset, Len: p.RegistersSize}, fmt.Sprintf("registers of pid %d", p.PID)})
		}
		if p.RegistersSize < 0 {
			problem("%s: pid %d: registers_size %d is negative", where, p.PID, p.RegistersSize)
		}
	}
	var badMaps []string
	if err := rows(conn, `SELECT pid, `+mappingColumns+` FROM hibernate_memory_map WHERE snapshot_id = ?1 ORDER BY pid, virtual_addr`, func(st *sqlite3.Stmt) {
		pid, m := st.ColumnInt64(0), scanMapping(st, 1)
		if m.Size <= 0 || m.End() < m.VirtualAddr {
			badMaps = append(badMaps, fmt.Sprintf("pid %d mapping %#x: size %d", pid, m.VirtualAddr, m.Size))
		}
		if m.PageSize <= 0 || m.PageSize&(m.PageSize-1) != 0 {
			badMaps = append(badMaps, fmt.Sprintf("pid %d mapping %#x: page_size %d is not a power of two", pid, m.VirtualAddr, m.PageSize))
		}
		if m.BlobOffset != nil {
			ranges = append(ranges, blobRange{disklayer.Range{Off: *m.BlobOffset, Len: m.Size}, fmt.Sprintf("mapping %#x of pid %d", m.VirtualAddr, pid)})
		}
	}, id); err != nil {
		return err
	}
	for _, b := range badMaps {
		problem("%s: %s", where, b)
	}
	if s.BlobFilePath != "" {
		return nil // offsets are into an external file this check cannot see
	}
	if s.BlobSize < 0 || s.BlobSize > sqlitelayer.HibernateSize {
		problem("%s: blob_size %d is outside the %d-byte hibernate file", where, s.BlobSize, sqlitelayer.HibernateSize)
	}
	slices.SortFunc(ranges, func(a, b blobRange) int { return cmpInt(a.Off, b.Off) })
	var outside, overlaps []string
	for i, r := range ranges {
		if r.Off < 0 || r.Len < 0 || r.End() < r.Off || r.End() > s.BlobSize || r.End() > sqlitelayer.HibernateSize {
			outside = append(outside, fmt.Sprintf("%s [%#x, %#x)", r.what, r.Off, r.End()))
		}
		if i > 0 && r.Off < ranges[i-1].End() {
			overlaps = append(overlaps, fmt.Sprintf("%s overlaps %s", r.what, ranges[i-1].what))
		}
	}
	if len(outside) > 0 {
		problem("%s: %d blob ranges outside [0, blob_size %#x): %s", where, len(outside), s.BlobSize, firstFew(outside))
	}
	if len(overlaps) > 0 {
		problem("%s: %d overlapping blob ranges: %s", where, len(overlaps), firstFew(overlaps))
	}
	return nil
}

func firstFew(items []string) string {
	const shown = 4
	if len(items) <= shown {
		return strings.Join(items, "; ")
	}
	return strings.Join(items[:shown], "; ") + "; …"
}

// Repair fixes what follows from the rest, in one transaction on the
// layer opened writable (which also migrates an older schema, including
// the seed's v0 tables): rows without their snapshot or process are
// deleted and total_processes is recounted. Ranges outside blob_size or
// overlapping (which Save never writes: the offsets themselves are
// damaged) and cycles in the process tree are not repairable; they remain
// in the returned report, which is a fresh Check with Repairs filled in.
func Repair(path string) (*sqlitelayer.Report, error) {
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		return &sqlitelayer.Report{Path: path}, fmt.Errorf("repair hibernate metadata of %q: %w", path, err)
	}
	var repairs []string
	err = f.Update("repair hibernate metadata", func(tx *sqlitelayer.Tx) error {
		conn := tx.Conn()
		fk, err := foreignKeyProblems(conn)
		if err != nil {
			return err
		}
		// Children first, so deleting orphan processes orphans nothing.
		for _, t := range []string{"hibernate_signals", "hibernate_files", "hibernate_memory_map", "hibernate_processes"} {
			if fk[t] == 0 {
				continue
			}
			if err := conn.Exec(`DELETE FROM ` + t + ` WHERE rowid IN (SELECT rowid FROM pragma_foreign_key_check('` + t + `'))`); err != nil {
				return err
			}
			repairs = append(repairs, fmt.Sprintf("hibernate metadata: %s: deleted %d orphan rows", t, conn.Changes()))
		}
		fixes := []struct{ sql, what string }{
			{`UPDATE hibernate_snapshot SET total_processes = (SELECT count(*) FROM hibernate_processes p WHERE p.snapshot_id = hibernate_snapshot.snapshot_id)
			  WHERE total_processes <> (SELECT count(*) FROM hibernate_processes p WHERE p.snapshot_id = hibernate_snapshot.snapshot_id)`,
				"recounted total_processes"},
		}
		for _, fx := range fixes {
			if err := conn.Exec(fx.sql); err != nil {
				return err
			}
			if n := conn.Changes(); n > 0 {
				repairs = append(repairs, fmt.Sprintf("hibernate metadata: %s of %d snapshot(s)", fx.what, n))
			}
		}
		return nil
	})
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return &sqlitelayer.Report{Path: path}, fmt.Errorf("repair hibernate metadata of %q: %w", path, err)
	}
	r, err := Check(path)
	if r != nil {
		r.Repairs = repairs
	}
	return r, err
}

func init() {
	sqlitelayer.RegisterTableCheck(tableCheck)
	diffdisk.RegisterCheck(diffdisk.ExtraCheck{Name: "hibernate metadata", Repair: Repair})
}
