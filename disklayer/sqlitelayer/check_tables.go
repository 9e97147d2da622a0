package sqlitelayer

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/ncruces/go-sqlite3"
)

// TableCheck is the consistency check of tables that another package owns
// in a layer's database (hibfile's hibernate metadata, the datastore,
// vm_state). sqlitelayer owns the schema history but not the meaning of
// those rows, and may not import the packages that do: they register
// their checks from init, and every check of a layer file runs them on
// the connection it checks with: Check, CheckWith (so diffdisk.Check and
// `hibdisk check`), Repair's check before and after, and a Strict open.
type TableCheck struct {
	// Name starts every line the check reports ("datastore: ...").
	Name string
	// Tables are the tables the check covers. A layer table that no
	// registered check covers, and that holds rows, is named in the
	// Report's Notes as not checked.
	Tables []string
	// Check reads the tables through conn, which it must not write or
	// leave in a transaction, and reports through r: one Problem per
	// inconsistency (every one, not only the first), a Note for what it
	// could not verify. info is the layer row. The error is for failing
	// to check at all; it is reported as a problem.
	Check func(conn *sqlite3.Conn, info Info, r *TableReport) error
}

// TableReport collects what one TableCheck finds; each line is prefixed
// with the check's name.
type TableReport struct {
	name   string
	report *Report
}

// Problemf reports an inconsistency.
func (t *TableReport) Problemf(format string, args ...any) {
	t.report.problemf("%s: %s", t.name, fmt.Sprintf(format, args...))
}

// Notef reports something the check could not verify, and why.
func (t *TableReport) Notef(format string, args ...any) {
	t.report.Notes = append(t.report.Notes, t.name+": "+fmt.Sprintf(format, args...))
}

var tableChecksMu sync.Mutex
var registeredTableChecks []TableCheck

// RegisterTableCheck adds c to every later check of a layer file.
// Packages call it from init.
func RegisterTableCheck(c TableCheck) {
	tableChecksMu.Lock()
	defer tableChecksMu.Unlock()
	registeredTableChecks = append(registeredTableChecks, c)
}

func tableCheckList() []TableCheck {
	tableChecksMu.Lock()
	defer tableChecksMu.Unlock()
	return slices.Clone(registeredTableChecks)
}

// coreTables are the tables sqlitelayer itself checks, and internal/store's
// record of the migrations applied (user_version is what is checked).
var coreTables = []string{"layer", "sectors", "hibernate_blocks", "migrations", "allocation"}

// runTableChecks runs every registered TableCheck on conn, then notes the
// tables that hold rows but that no check covers (their package is not
// linked into this program).
func runTableChecks(conn *sqlite3.Conn, info Info, r *Report) {
	covered := map[string]bool{}
	for _, t := range coreTables {
		covered[t] = true
	}
	for _, c := range tableCheckList() {
		for _, t := range c.Tables {
			covered[t] = true
		}
		if err := c.Check(conn, info, &TableReport{name: c.Name, report: r}); err != nil {
			r.problemf("%s: cannot check: %v", c.Name, mapStoreError(err))
		}
	}
	var unchecked []string
	for _, t := range tableNames(conn, r) {
		if covered[t] || strings.HasPrefix(t, "sqlite_") {
			continue
		}
		if hasRows(conn, t) {
			unchecked = append(unchecked, t)
		}
	}
	if len(unchecked) > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("tables not checked (no check for them is linked into this program): %s", strings.Join(unchecked, ", ")))
	}
}

func tableNames(conn *sqlite3.Conn, r *Report) []string {
	stmt, _, err := conn.Prepare(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		r.problemf("cannot list the tables: %v", err)
		return nil
	}
	defer stmt.Close()
	var names []string
	for stmt.Step() {
		names = append(names, stmt.ColumnText(0))
	}
	if err := stmt.Err(); err != nil {
		r.problemf("cannot list the tables: %v", err)
	}
	return names
}

func hasRows(conn *sqlite3.Conn, table string) bool {
	stmt, _, err := conn.Prepare(`SELECT EXISTS (SELECT 1 FROM "` + strings.ReplaceAll(table, `"`, `""`) + `")`)
	if err != nil {
		return true
	}
	defer stmt.Close()
	return !stmt.Step() || stmt.ColumnBool(0)
}

// RunTableCheck runs c alone on conn, adding what it finds to r: for a
// package's own command that checks only its tables (`hibdisk hib check`).
func RunTableCheck(conn *sqlite3.Conn, info Info, c TableCheck, r *Report) error {
	return c.Check(conn, info, &TableReport{name: c.Name, report: r})
}
