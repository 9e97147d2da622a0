package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/checktest"
)

// TestCheckIncludesDatastoreAndVMState: hibdisk check runs the datastore
// and vm_state checks with the rest, and names what is wrong in each.
func TestCheckIncludesDatastoreAndVMState(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	mustHib(t, dir, "ds", "publish", "--owner", "agent", "base.db", "u32", "svc.count", "42")
	if out := mustHib(t, dir, "check", "base.db"); !strings.Contains(out, "No errors were found") {
		t.Fatalf("check of a healthy layer with a datastore entry:\n%s", out)
	}
	path := filepath.Join(dir, "base.db")
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		"PRAGMA foreign_keys = OFF",
		"UPDATE datastore SET value = 'forty-two' WHERE key = 'svc.count'",
		`INSERT INTO vm_state (id, snapshot_id, qemu_version, machine_type, config, command_line, ram_size, ram_digest, device_state, state_digest, saved_at)
		 VALUES (1, 99, '7.2.0', 'pc-i440fx-7.2', '{"machine_type": "pc-i440fx-7.2", "memory_mib": 1}', '[]', 1048576,
		 '` + strings.Repeat("0", 64) + `', x'00', '` + strings.Repeat("0", 64) + `', '2026-01-02T03:04:05Z')`,
	} {
		if err := conn.Exec(sql); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	checktest.Damaged(t, path, "datastore:", "vm_state:")
	r := hib(t, dir, "check", "base.db")
	if r.code != 2 {
		t.Fatalf("check of a damaged datastore and vm_state: exit %d, want 2 (corruption, as qemu-img check)\n%s", r.code, r.stdout)
	}
	for _, want := range []string{
		`ERROR: datastore: 1 entries whose value does not fit their type: "svc.count" (u32)`,
		"ERROR: vm_state: the row belongs to snapshot 99, which the layer does not hold (an orphan)",
		"ERROR: vm_state: device state (1 bytes) has digest",
		"Note: vm_state: RAM digest not verified: the layer holds no snapshot of its own",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("check does not say %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "3 problem(s) found") {
		t.Errorf("stderr %q, want the count of problems", r.stderr)
	}
}
