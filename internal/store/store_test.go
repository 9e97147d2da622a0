package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/ncruces/go-sqlite3"
)

func testMigrations(applied *[]string) []Migration {
	step := func(name, sql string) Migration {
		return Migration{Name: name, Apply: func(c *sqlite3.Conn) error {
			*applied = append(*applied, name)
			return c.Exec(sql)
		}}
	}
	return []Migration{
		step("one", "CREATE TABLE a (x INTEGER)"),
		step("two", "CREATE TABLE b (y INTEGER)"),
	}
}

func TestCreateOpenMigrate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	var applied []string
	migrations := testMigrations(&applied)
	conn, err := Create(path, Options{PageSize: 16384, Migrations: migrations[:1]})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := PragmaInt(conn, "page_size"); got != 16384 {
		t.Errorf("page_size = %d, want 16384", got)
	}
	if got, _ := PragmaInt(conn, "user_version"); got != 1 {
		t.Errorf("user_version = %d, want 1", got)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-wal"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("WAL left behind after close: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after create, want only the database", len(entries))
	}

	// Opening with one more migration applies exactly that one.
	applied = nil
	conn, err = Open(path, Options{Migrations: migrations})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if fmt.Sprint(applied) != "[two]" {
		t.Errorf("applied %v, want [two]", applied)
	}
	if got, _ := PragmaInt(conn, "user_version"); got != 2 {
		t.Errorf("user_version = %d, want 2", got)
	}
	if got, _ := PragmaInt(conn, "application_id"); uint32(got) != ApplicationID {
		t.Errorf("application_id = %#x, want %#x", got, ApplicationID)
	}
	if got, _ := PragmaInt(conn, "synchronous"); got != 2 {
		t.Errorf("synchronous = %d, want 2 (FULL)", got)
	}
	h, err := ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	if h.ApplicationID != ApplicationID || h.PageSize != 16384 {
		t.Errorf("header = %+v", h)
	}
}

func TestCreateRefusesExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(path, Options{}); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create over an existing file: %v, want os.ErrExist", err)
	}
}

func TestMigrationFailureRollsBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	var applied []string
	migrations := testMigrations(&applied)
	conn, err := Create(path, Options{Migrations: migrations[:1]})
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	failing := append(migrations[:1:1], Migration{Name: "broken", Apply: func(c *sqlite3.Conn) error {
		if err := c.Exec("CREATE TABLE c (z INTEGER)"); err != nil {
			return err
		}
		return errors.New("boom")
	}})
	if _, err := Open(path, Options{Migrations: failing}); err == nil {
		t.Fatal("Open with a failing migration succeeded")
	}
	conn, err = Open(path, Options{Migrations: migrations[:1]})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if v, _ := PragmaInt(conn, "user_version"); v != 1 {
		t.Errorf("user_version = %d after failed migration, want 1", v)
	}
	if err := conn.Exec("SELECT * FROM c"); err == nil {
		t.Error("table c exists: the failed migration was not rolled back")
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	var applied []string
	migrations := testMigrations(&applied)

	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := filepath.Join(dir, "plain.db")
	c, err := sqlite3.Open(plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec("CREATE TABLE t (x)"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	newer := filepath.Join(dir, "newer.db")
	c, err = Create(newer, Options{Migrations: migrations})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec("PRAGMA user_version=99"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	tests := []struct {
		name string
		path string
		want error
	}{
		{"empty", write("empty", nil), ErrNotSQLite},
		{"random", write("random", []byte("this is definitely not a database, it is a raw disk image of some kind....................................")), ErrNotSQLite},
		{"plain SQLite", plain, ErrOtherApplication},
		{"newer schema", newer, ErrNewerSchema},
		{"missing", filepath.Join(dir, "missing"), os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := Open(tt.path, Options{Migrations: migrations})
			if !errors.Is(err, tt.want) {
				t.Errorf("Open: %v, want %v", err, tt.want)
			}
			if conn != nil {
				conn.Close()
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Error("Open created the missing file")
	}
}

func TestIsSQLite(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(raw, make([]byte, 1<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	ok, _, err := IsSQLite(raw)
	if err != nil || ok {
		t.Errorf("IsSQLite(zeros) = %v, %v; want false, nil", ok, err)
	}
	db := filepath.Join(dir, "db")
	c, err := Create(db, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ok, app, err := IsSQLite(db)
	if err != nil || !ok || app != ApplicationID {
		t.Errorf("IsSQLite(db) = %v, %#x, %v; want true, %#x, nil", ok, app, err, ApplicationID)
	}
	if _, _, err := IsSQLite(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("IsSQLite(missing) error = %v, want ErrNotExist", err)
	}
}

func TestReadOnlyNeedsMigration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	var applied []string
	migrations := testMigrations(&applied)
	c, err := Create(path, Options{Migrations: migrations[:1]})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := Open(path, Options{ReadOnly: true, Migrations: migrations}); !errors.Is(err, ErrNeedsMigration) {
		t.Errorf("read-only open of an old schema: %v, want ErrNeedsMigration", err)
	}
	c, err = Open(path, Options{ReadOnly: true, Migrations: migrations[:1]})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Exec("CREATE TABLE z (x)"); err == nil {
		t.Error("write through a read-only connection succeeded")
	}
}

func TestMigrationsTableRecordsEachVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	var applied []string
	migrations := testMigrations(&applied)
	c, err := Create(path, Options{Migrations: migrations[:1]})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c, err = Open(path, Options{Migrations: migrations})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := AppliedMigrations(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Version != 1 || got[0].Name != "one" || got[1].Version != 2 || got[1].Name != "two" {
		t.Fatalf("migrations table = %+v, want versions 1 (one) and 2 (two)", got)
	}
	for _, m := range got {
		if m.AppliedAt.IsZero() {
			t.Errorf("migration %d has no applied_at", m.Version)
		}
	}
}

func TestMigrationsTableRolledBackWithFailedMigration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	// A database migrated before the migrations table existed: version 1,
	// no table.
	c, err := Create(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec("CREATE TABLE a (x INTEGER); PRAGMA user_version=1"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	var applied []string
	migrations := testMigrations(&applied)
	failing := append(migrations[:1:1], Migration{Name: "broken", Apply: func(*sqlite3.Conn) error { return errors.New("boom") }})
	if _, err := Open(path, Options{Migrations: failing}); err == nil {
		t.Fatal("Open with a failing migration succeeded")
	}
	c, err = Open(path, Options{Migrations: migrations})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := AppliedMigrations(c)
	if err != nil {
		t.Fatal(err)
	}
	// Version 1 predates the table; only version 2 is recorded, and the
	// failed attempt left nothing.
	if len(got) != 1 || got[0].Version != 2 || got[0].Name != "two" {
		t.Fatalf("migrations table = %+v, want only version 2 (two)", got)
	}
}

func TestReadOnlyReadableFrom(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	var applied []string
	migrations := testMigrations(&applied)
	c, err := Create(path, Options{Migrations: migrations[:1]})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	applied = nil
	c, err = Open(path, Options{ReadOnly: true, Migrations: migrations, ReadableFrom: 1})
	if err != nil {
		t.Fatalf("read-only open of version 1 with ReadableFrom 1: %v", err)
	}
	v, _ := PragmaInt(c, "user_version")
	c.Close()
	if v != 1 || len(applied) != 0 {
		t.Errorf("read-only open migrated: user_version %d, applied %v", v, applied)
	}
	if _, err := Open(path, Options{ReadOnly: true, Migrations: append(migrations, Migration{Name: "three", Apply: func(*sqlite3.Conn) error { return nil }}), ReadableFrom: 2}); !errors.Is(err, ErrNeedsMigration) {
		t.Errorf("read-only open of version 1 with ReadableFrom 2: %v, want ErrNeedsMigration", err)
	}
}
