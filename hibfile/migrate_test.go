package hibfile_test

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

// seedLayer makes a version 1 layer (DESIGN.md's three tables) holding
// the seed's literal v0 hibernate tables with rows.
func seedLayer(t *testing.T) string {
	t.Helper()
	path := checked(t, filepath.Join(t.TempDir(), "seed.db"))
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	storetest.DowngradeToV1(t, path)
	storetest.Exec(t, path,
		schema.HibernateSeed,
		`INSERT INTO hibernate_snapshot VALUES (7, 1700000000, '6.6.0-seed', 2, 524288, NULL)`,
		`INSERT INTO hibernate_processes VALUES (1, 0, 'init', 'S', 0, 4194304, 8192, '/', 7)`,
		`INSERT INTO hibernate_processes VALUES (42, 1, 'shell', 'R', 256, 4194304, 4096, '/home', 7)`,
		`INSERT INTO hibernate_memory_map VALUES (1, 4194304, NULL, 4096, 'rw-p', 'dirty', 4096, 7)`,
		`INSERT INTO hibernate_memory_map VALUES (1, 4198400, 1234, 4096, 'r-xp', '', NULL, 7)`,
		`INSERT INTO hibernate_memory_map VALUES (42, 4194304, NULL, 4096, 'rw-p', 'dirty', 8192, 7)`,
		`INSERT INTO hibernate_files VALUES (42, 0, '/dev/tty', 0, 2, 7)`,
		`INSERT INTO hibernate_files VALUES (42, 3, '/var/log/x', 99, 524353, 7)`,
		`INSERT INTO hibernate_signals VALUES (42, 2, 4198656, 268435456, 7)`,
		`INSERT INTO hibernate_signals VALUES (42, 13, 1, 0, 7)`,
		`INSERT INTO hibernate_signals VALUES (1, 15, 0, 0, 7)`,
	)
	return path
}

func TestMigrateSeedV0(t *testing.T) {
	path := seedLayer(t)

	// Read-only, the layer serves, but its hibernate tables need a migration.
	if _, err := hibfile.Latest(path); !errors.Is(err, hibfile.ErrNeedsMigration) {
		t.Fatalf("Latest on an unmigrated seed layer: %v, want ErrNeedsMigration", err)
	}
	if r, err := hibfile.Check(path); err != nil || r.OK() {
		t.Fatalf("Check on an unmigrated seed layer = %v, %v; want a problem", r, err)
	}
	if h, _ := store.ReadHeader(path); h.UserVersion != 1 {
		t.Fatalf("read-only use migrated the layer to %d", h.UserVersion)
	}

	// A writable open migrates.
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	uuid := f.Info().UUID
	f.Close()
	checked(t, path)
	if h, _ := store.ReadHeader(path); h.UserVersion != sqlitelayer.SchemaVersion {
		t.Fatalf("user_version after migration = %d, want %d", h.UserVersion, sqlitelayer.SchemaVersion)
	}
	got, err := hibfile.Latest(path)
	if err != nil {
		t.Fatal(err)
	}
	want := &hibfile.Snapshot{
		ID: 7, LayerUUID: uuid,
		Timestamp: time.Unix(1700000000, 0).UTC(), KernelVersion: "6.6.0-seed", TotalMemoryKB: 524288,
		Source: "seed-v0", Status: "complete", BlobSize: 8192 + 4096, TotalProcesses: 2,
		Processes: []hibfile.Process{
			{PID: 1, ParentPID: 0, Name: "init", State: "S", RegistersOffset: ptr(int64(0)), MemoryStart: 4194304, MemorySize: 8192, CwdPath: "/",
				Mappings: []hibfile.Mapping{
					{VirtualAddr: 4194304, Size: 4096, PageSize: 4096, Permissions: "rw-p", Flags: "dirty", BlobOffset: ptr(int64(4096))},
					{VirtualAddr: 4198400, Size: 4096, PhysicalAddr: ptr(int64(1234)), PageSize: 4096, Permissions: "r-xp"},
				},
				Signals: []hibfile.Signal{{Number: 15, Disposition: "default"}},
			},
			{PID: 42, ParentPID: 1, Name: "shell", State: "R", RegistersOffset: ptr(int64(256)), MemoryStart: 4194304, MemorySize: 4096, CwdPath: "/home",
				Mappings: []hibfile.Mapping{{VirtualAddr: 4194304, Size: 4096, PageSize: 4096, Permissions: "rw-p", Flags: "dirty", BlobOffset: ptr(int64(8192))}},
				Files: []hibfile.File{
					{FD: 0, Path: "/dev/tty", Flags: "O_RDWR"},
					{FD: 3, Path: "/var/log/x", Position: 99, Flags: "O_WRONLY|O_CREAT|O_CLOEXEC"},
				},
				Signals: []hibfile.Signal{
					{Number: 2, HandlerAddress: ptr(int64(4198656)), Disposition: "handler", Flags: "SA_RESTART"},
					{Number: 13, Disposition: "ignore"},
				},
			},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("migrated snapshot differs (-want +got):\n%s", diff)
	}
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	applied, err := store.AppliedMigrations(conn)
	if err != nil || len(applied) != sqlitelayer.SchemaVersion-1 || applied[0].Version != schema.Hibernate {
		t.Errorf("migrations table = %+v, %v; want rows for versions %d to %d", applied, err, schema.Hibernate, sqlitelayer.SchemaVersion)
	}
	if err := conn.Exec("SELECT * FROM seed_hibernate_snapshot"); err == nil {
		t.Error("the seed's tables were left behind")
	}
}

func TestRepairMigratesSeedV0(t *testing.T) {
	path := seedLayer(t)
	r, err := hibfile.Repair(path)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() {
		t.Fatalf("after Repair: %s", r)
	}
	if _, err := hibfile.Latest(path); err != nil {
		t.Fatal(err)
	}
}
