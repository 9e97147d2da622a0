// Package storetest holds test helpers for layer databases that several
// packages' tests share.
package storetest

import (
	"testing"

	"github.com/ncruces/go-sqlite3"
)

// DowngradeToV1 turns a current layer into the version 1 layout of
// DESIGN.md (the layer tables only, no migrations table), as files
// created before version 2 look.
func DowngradeToV1(t testing.TB, path string) {
	t.Helper()
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Triggers and views first (they name what is dropped after them),
	// then tables, then the layer columns version 1 did not have.
	stmt, _, err := conn.Prepare(`SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view', 'table')
 AND name NOT IN ('layer', 'sectors', 'hibernate_blocks') AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table'`)
	if err != nil {
		t.Fatal(err)
	}
	var drops []string
	for stmt.Step() {
		drops = append(drops, "DROP "+stmt.ColumnText(0)+" "+stmt.ColumnText(1))
	}
	stmt.Close()
	for _, col := range []string{"generation", "parent_generation", "parent_sha256", "parent_stat", "read_cache", "allocation_generation"} {
		drops = append(drops, "ALTER TABLE layer DROP COLUMN "+col)
	}
	for _, sql := range append(append([]string{"PRAGMA foreign_keys = OFF"}, drops...), "PRAGMA user_version = 1") {
		if err := conn.Exec(sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

// Exec runs SQL statements on the database at path through a connection
// of its own, as a user (or damage) would, outside any hibdisk API.
func Exec(t testing.TB, path string, sql ...string) {
	t.Helper()
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, s := range sql {
		if err := conn.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}
