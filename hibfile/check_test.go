package hibfile_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/internal/checktest"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

// savedLayer is a base layer holding a small synthetic snapshot, checked
// when the test ends (a test that breaks it says so with
// checktest.Damaged).
func savedLayer(t *testing.T) string {
	t.Helper()
	path := checked(t, filepath.Join(t.TempDir(), "l.db"))
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	s, img := synthetic(5, 4, 3, 2, 2, 2, 3)
	mustSave(t, path, s, img)
	return path
}

func TestCheckFindsEveryProblem(t *testing.T) {
	path := savedLayer(t)
	checktest.Damaged(t, path, "cycle", "outside [0, blob_size", "overlapping")
	storetest.Exec(t, path,
		"PRAGMA foreign_keys = OFF",
		// A cycle: 100 → 101 → 100 (101's parent is 100 in the synthetic tree).
		"UPDATE hibernate_processes SET parent_pid = 101 WHERE pid = 100",
		// A range past blob_size and one overlapping another.
		"UPDATE hibernate_memory_map SET blob_offset = 1 << 40 WHERE pid = 102 AND virtual_addr = 4194304",
		"UPDATE hibernate_processes SET registers_offset = (SELECT registers_offset FROM hibernate_processes WHERE pid = 100) WHERE pid = 103",
		"UPDATE hibernate_snapshot SET total_processes = 7",
		"INSERT INTO hibernate_signals (snapshot_id, pid, signal_number) VALUES (1, 999, 9)",
		"UPDATE hibernate_memory_map SET page_size = 3000 WHERE pid = 101 AND virtual_addr = 4194304",
	)
	r, err := hibfile.Check(path)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(r.Problems, "\n")
	for _, want := range []string{"cycle", "outside [0, blob_size", "overlapping", "total_processes is 7", "hibernate_signals: 1 rows without", "page_size 3000"} {
		if !strings.Contains(all, want) {
			t.Errorf("Check does not report %q; it says:\n%s", want, all)
		}
	}
	// Repair fixes the totals and orphans, not the rest.
	r, err = hibfile.Repair(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Repairs) != 2 {
		t.Errorf("Repairs = %q, want orphans and total_processes", r.Repairs)
	}
	all = strings.Join(r.Problems, "\n")
	if strings.Contains(all, "total_processes") || strings.Contains(all, "without") || !strings.Contains(all, "cycle") {
		t.Errorf("after Repair, problems:\n%s", all)
	}
	// The restore plan refuses a cyclic tree.
	v := latestView(t, path)
	for _, err := range v.RestorePlan() {
		if !errors.Is(err, hibfile.ErrCycle) {
			t.Errorf("restore plan of a cyclic tree: %v, want ErrCycle", err)
		}
		break
	}
}

func TestCheckTruncatedAndForeignFiles(t *testing.T) {
	path := savedLayer(t)
	checktest.Damaged(t, path, "truncated")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, st.Size()/2); err != nil {
		t.Fatal(err)
	}
	if _, err := hibfile.Check(path); !errors.Is(err, disklayer.ErrCorrupt) {
		t.Errorf("Check of a truncated layer: %v, want ErrCorrupt", err)
	}
	other := filepath.Join(t.TempDir(), "x.img")
	os.WriteFile(other, make([]byte, 8192), 0o644)
	if _, err := hibfile.Check(other); !errors.Is(err, disklayer.ErrNotLayer) {
		t.Errorf("Check of a raw file: %v, want ErrNotLayer", err)
	}
}

func TestRestorePlanParentFirst(t *testing.T) {
	path := savedLayer(t)
	want, err := hibfile.Latest(path)
	if err != nil {
		t.Fatal(err)
	}
	v := latestView(t, path)
	restored := map[int64]bool{}
	n := 0
	for step, err := range v.RestorePlan() {
		if err != nil {
			t.Fatal(err)
		}
		n++
		p := step.Process
		if p.ParentPID != 1 && !restored[p.ParentPID] {
			t.Errorf("pid %d planned before its parent %d", p.PID, p.ParentPID)
		}
		restored[p.PID] = true
		if len(step.Registers) != 216 {
			t.Errorf("pid %d: %d register bytes, want 216", p.PID, len(step.Registers))
		}
		for _, mc := range step.Content {
			if mc.Blob.Off != *mc.Mapping.BlobOffset || mc.Blob.Len != mc.Mapping.Size {
				t.Errorf("pid %d mapping %#x: blob %+v", p.PID, mc.Mapping.VirtualAddr, mc.Blob)
			}
		}
		if len(step.Content) != 2 || len(p.Files) != 2 || len(p.Signals) != 3 {
			t.Errorf("pid %d: %d stored mappings, %d files, %d signals; want 2, 2, 3", p.PID, len(step.Content), len(p.Files), len(p.Signals))
		}
	}
	if n != len(want.Processes) {
		t.Errorf("plan has %d steps, want %d", n, len(want.Processes))
	}
}

func TestViews(t *testing.T) {
	path := savedLayer(t)
	conn := openSQL(t, path)
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT pid, parent_pid, depth, tree FROM hibernate_process_tree")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	depth := map[int64]int64{}
	rows := 0
	for stmt.Step() {
		rows++
		pid, parent, d, tree := stmt.ColumnInt64(0), stmt.ColumnInt64(1), stmt.ColumnInt64(2), stmt.ColumnText(3)
		if pd, ok := depth[parent]; ok && d != pd+1 {
			t.Errorf("pid %d at depth %d, its parent at %d", pid, d, pd)
		} else if !ok && d != 0 {
			t.Errorf("pid %d at depth %d before its parent", pid, d)
		}
		if !strings.HasPrefix(tree, strings.Repeat("  ", int(d))+"proc") {
			t.Errorf("tree column %q at depth %d", tree, d)
		}
		depth[pid] = d
	}
	if err := stmt.Err(); err != nil || rows != 4 {
		t.Fatalf("%d rows, %v", rows, err)
	}
	for _, sql := range []string{"SELECT range, blob_offset FROM hibernate_maps", "SELECT processes, mappings, files, signals, stored_kb FROM hibernate_summary"} {
		st, _, err := conn.Prepare(sql)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if !st.Step() {
			t.Errorf("%s: no rows (%v)", sql, st.Err())
		}
		st.Close()
	}
}
