package sqlitelayer_test

import (
	"errors"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/store"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

func userVersion(t *testing.T, path string) int {
	t.Helper()
	h, err := store.ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(h.UserVersion)
}

func TestCreateWritesCurrentSchema(t *testing.T) {
	path := newLayerPath(t, "l.db")
	createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20}).Close()
	if v := userVersion(t, path); v != sqlitelayer.SchemaVersion {
		t.Errorf("user_version = %d, want %d", v, sqlitelayer.SchemaVersion)
	}
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	applied, err := store.AppliedMigrations(conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != sqlitelayer.SchemaVersion {
		t.Fatalf("migrations table = %+v, want %d rows", applied, sqlitelayer.SchemaVersion)
	}
}

func TestVersion1LayerReadOnlyThenMigrated(t *testing.T) {
	path := newLayerPath(t, "old.db")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20})
	mustWrite(t, f, fill(4096, 7), 4096)
	f.Close()
	storetest.DowngradeToV1(t, path)

	// A read-only open reads a version 1 layer as it is, and leaves it so.
	ro, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only open of a version 1 layer: %v", err)
	}
	if got := mustRead(t, ro, 4096, 4096); got[0] != fill(4096, 7)[0] {
		t.Error("version 1 layer reads back wrong data")
	}
	ro.Close()
	if v := userVersion(t, path); v != 1 {
		t.Fatalf("read-only open changed user_version to %d", v)
	}
	if r, err := sqlitelayer.Check(path); err != nil || !r.OK() || len(r.Notes) == 0 {
		t.Errorf("Check of a version 1 layer: %v, %v; want ok with a note about migrating", r, err)
	}

	// A writable open migrates, recording only the new version.
	w, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if v := userVersion(t, path); v != sqlitelayer.SchemaVersion {
		t.Fatalf("user_version after writable open = %d, want %d", v, sqlitelayer.SchemaVersion)
	}
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	applied, _ := store.AppliedMigrations(conn)
	if len(applied) != sqlitelayer.SchemaVersion-1 || applied[0].Version != 2 {
		t.Errorf("migrations table = %+v, want rows for versions 2 to %d", applied, sqlitelayer.SchemaVersion)
	}
	if err := conn.Exec("SELECT count(*) FROM hibernate_process_tree"); err != nil {
		t.Errorf("views missing after migration: %v", err)
	}
}

func TestRepairMigratesVersion1(t *testing.T) {
	path := newLayerPath(t, "old.db")
	createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20}).Close()
	storetest.DowngradeToV1(t, path)
	if _, err := sqlitelayer.Repair(path); err != nil {
		t.Fatal(err)
	}
	if v := userVersion(t, path); v != sqlitelayer.SchemaVersion {
		t.Errorf("user_version after Repair = %d, want %d", v, sqlitelayer.SchemaVersion)
	}
}

func TestUpdateIsOneTransaction(t *testing.T) {
	path := newLayerPath(t, "u.db")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20})
	// A row the hibernate metadata check accepts: the test's layers are
	// checked at the end.
	uuid := f.Info().UUID
	insert := func(tx *sqlitelayer.Tx) error {
		return tx.Conn().Exec(`INSERT INTO hibernate_snapshot (snapshot_id, timestamp, total_processes, total_memory_kb, layer_uuid) VALUES (1, '2026-01-02T03:04:05Z', 0, 0, '` + uuid + `')`)
	}
	boom := errors.New("boom")
	err := f.Update("test", func(tx *sqlitelayer.Tx) error {
		if err := insert(tx); err != nil {
			return err
		}
		if err := tx.WriteHibernate(fill(8192, 3), 1<<30); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	if got := mustRead(t, f.Hibernate(), 1<<30, 8192); got[0] != 0 {
		t.Error("hibernate write of a failed Update is visible")
	}
	if err := f.Update("test", func(tx *sqlitelayer.Tx) error {
		if err := insert(tx); err != nil {
			return err
		}
		if err := tx.WriteHibernate(fill(8192, 3), 1<<30); err != nil {
			return err
		}
		return tx.ForgetHibernate(1<<30+4096, 4096)
	}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Committed: visible to a fresh connection.
	if rows := rowKinds(t, path, "hibernate_blocks"); len(rows) != 1 || rows[(1<<30)/4096] != "data" {
		t.Errorf("hibernate_blocks = %v, want one data row (the other block forgotten)", rows)
	}
	conn, _ := sqlite3.Open(path)
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT count(*) FROM hibernate_snapshot")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	if !stmt.Step() || stmt.ColumnInt(0) != 1 {
		t.Errorf("hibernate_snapshot rows = %d, want 1", stmt.ColumnInt(0))
	}
}
