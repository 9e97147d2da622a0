package sqlitelayer

import (
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// The allocation summary (schema version schema.Allocation; the DDL and
// what it means are in internal/schema): the runs of zero and data
// sectors of a layer that no longer changes, valid while the layer's
// allocation_generation equals its generation. A layer opened read-only
// maps its disk from it (Extents) instead of from every row of sectors;
// writable opens never use it (their own uncommitted writes are not in
// it, and the generation moves only at commit).

// Kinds of the allocation table's runs.
const (
	runZero = 1
	runData = 2
)

// selectRuns: the runs that may overlap [?1, ?2], at most ?3: the run
// holding ?1 (the last to start at or before it), and every run starting
// after it up to ?2. start is the table's key, so both are index seeks.
const selectRuns = `SELECT start, count, kind FROM allocation
WHERE start >= coalesce((SELECT max(start) FROM allocation WHERE start <= ?1), ?1) AND start <= ?2
ORDER BY start LIMIT ?3`

// summaryValid: whether the summary describes the layer as committed.
const summaryValid = `SELECT allocation_generation IS generation FROM layer`

// hasAllocation reports whether the layer's schema has the allocation
// summary (a read-only open does not migrate an older layer).
func hasAllocation(conn *sqlite3.Conn) (bool, error) {
	v, err := store.PragmaInt(conn, "user_version")
	if err != nil {
		return false, err
	}
	return v >= schema.Allocation, nil
}

// summaryRuns is one chunk of runs read from the allocation table.
type summaryRun struct {
	start, count int64
	zero         bool
}

// prepareSummary readies a read-only layer's sectors table to map from
// the allocation summary, when its schema has one.
func (t *blockTable) prepareSummary() error {
	if t.table != "sectors" || !t.e.openedReadOnly {
		return nil
	}
	ok, err := hasAllocation(t.e.conn)
	if err != nil || !ok {
		return err
	}
	if t.selectRuns, _, err = t.e.conn.Prepare(selectRuns); err != nil {
		return err
	}
	if t.summaryValid, _, err = t.e.conn.Prepare(summaryValid); err != nil {
		return err
	}
	return nil
}

// runsChunk appends to runs up to extentRowsPerLock runs that may
// overlap blocks [first, last], and reports false (and no runs) when the
// layer has no summary valid for what it holds now.
func (t *blockTable) runsChunk(runs []summaryRun, first, last int64) ([]summaryRun, bool, error) {
	if t.selectRuns == nil || summaryOff {
		return runs, false, nil
	}
	t.e.lockFor(t, first, last)
	defer t.e.mu.Unlock()
	if err := t.usable("map"); err != nil {
		return runs, false, err
	}
	if err := t.e.beginReadLocked("map"); err != nil {
		return runs, false, err
	}
	valid := t.summaryValid.Step() && t.summaryValid.ColumnBool(0)
	if err := t.summaryValid.Reset(); err != nil {
		return runs, false, t.wrap("map", first*int64(t.blockSize), err)
	}
	if !valid {
		return runs, false, nil
	}
	stmt := t.selectRuns
	stmt.BindInt64(1, first)
	stmt.BindInt64(2, last)
	stmt.BindInt64(3, extentRowsPerLock)
	for stmt.Step() {
		runs = append(runs, summaryRun{start: stmt.ColumnInt64(0), count: stmt.ColumnInt64(1), zero: stmt.ColumnInt(2) == runZero})
	}
	if err := stmt.Reset(); err != nil {
		return runs, false, t.wrap("map", first*int64(t.blockSize), err)
	}
	return runs, true, nil
}

// summaryOff makes Extents ignore summaries (tests compare both ways).
var summaryOff bool

// WriteSummary stores the allocation summary of the layer as it is now:
// what a layer that will not change again (a converted base, a sealed or
// compacted layer) keeps so that its readers map it from a few rows. It
// commits what is batched first; the summary itself does not move the
// generation. A later change to the content makes it stale, and readers
// then map from the rows as before.
func (f *File) WriteSummary() error {
	e := f.eng
	const op = "write allocation summary"
	e.lock()
	defer e.mu.Unlock()
	if err := e.writable(op); err != nil {
		return err
	}
	if err := f.disk.flushLocked(op); err != nil {
		return err
	}
	return e.changeMetadataLocked(op, false, func(conn *sqlite3.Conn, _ *Info) error {
		return writeSummary(conn)
	})
}

// writeSummary replaces the allocation table with the runs of the
// sectors table, valid for the layer's generation, inside the caller's
// transaction. It reads typeof(data), never a blob.
func writeSummary(conn *sqlite3.Conn) error {
	if err := conn.Exec("DELETE FROM allocation"); err != nil {
		return err
	}
	scan, _, err := conn.Prepare("SELECT sector, typeof(data) = 'null' FROM sectors ORDER BY sector")
	if err != nil {
		return err
	}
	defer scan.Close()
	var runs []summaryRun // the last is still growing
	for scan.Step() {
		key, zero := scan.ColumnInt64(0), scan.ColumnBool(1)
		if n := len(runs); n > 0 && runs[n-1].zero == zero && runs[n-1].start+runs[n-1].count == key {
			runs[n-1].count++
			continue
		}
		if len(runs) > extentRowsPerLock {
			if err := insertRuns(conn, runs[:len(runs)-1]); err != nil {
				return err
			}
			runs = append(runs[:0], runs[len(runs)-1])
		}
		runs = append(runs, summaryRun{start: key, count: 1, zero: zero})
	}
	if err := scan.Err(); err != nil {
		return err
	}
	if err := insertRuns(conn, runs); err != nil {
		return err
	}
	return conn.Exec("UPDATE layer SET allocation_generation = generation")
}

// checkSummary reports how a summary that claims to be valid disagrees
// with the rows of sectors (problem is called once per disagreement, at
// most a few times); a stale summary is not checked, it is not used.
func checkSummary(conn *sqlite3.Conn, problem func(string)) error {
	ok, err := hasAllocation(conn)
	if err != nil || !ok {
		return err
	}
	valid, err := queryBool(conn, summaryValid)
	if err != nil || !valid {
		return err
	}
	runs, _, err := conn.Prepare("SELECT start, count, kind FROM allocation ORDER BY start")
	if err != nil {
		return err
	}
	defer runs.Close()
	rows, _, err := conn.Prepare("SELECT sector, typeof(data) = 'null' FROM sectors ORDER BY sector")
	if err != nil {
		return err
	}
	defer rows.Close()
	const most = 5
	found := 0
	report := func(s string) {
		if found < most {
			problem(s)
		}
		found++
	}
	// Walk both in order: every row must fall in a run of its kind, and
	// every run must be covered by rows, sector by sector.
	var run summaryRun
	var at int64 // next sector the current run expects
	haveRow := rows.Step()
	for runs.Step() {
		run = summaryRun{start: runs.ColumnInt64(0), count: runs.ColumnInt64(1), zero: runs.ColumnInt(2) == runZero}
		for haveRow && rows.ColumnInt64(0) < run.start {
			report(fmt.Sprintf("allocation summary: sector %d has a row but lies in no run", rows.ColumnInt64(0)))
			haveRow = rows.Step()
		}
		for at = run.start; at < run.start+run.count; at++ {
			if !haveRow || rows.ColumnInt64(0) != at {
				report(fmt.Sprintf("allocation summary: run at sector %d (%d sectors) says sector %d is allocated; it has no row", run.start, run.count, at))
				break
			}
			if rows.ColumnBool(1) != run.zero {
				report(fmt.Sprintf("allocation summary: sector %d is of another kind than its run at %d says", at, run.start))
			}
			haveRow = rows.Step()
		}
		if found >= most {
			break
		}
	}
	if err := runs.Err(); err != nil {
		return err
	}
	for haveRow && found < most {
		report(fmt.Sprintf("allocation summary: sector %d has a row but lies in no run", rows.ColumnInt64(0)))
		haveRow = rows.Step()
	}
	if found > most {
		problem(fmt.Sprintf("allocation summary: %d more disagreements", found-most))
	}
	return rows.Err()
}

// queryBool runs a query returning one boolean.
func queryBool(conn *sqlite3.Conn, sql string) (bool, error) {
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return false, err
	}
	defer stmt.Close()
	v := stmt.Step() && stmt.ColumnBool(0)
	return v, stmt.Err()
}
