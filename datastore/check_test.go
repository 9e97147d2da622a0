package datastore_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/datastore"
	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/checktest"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

// populated makes a base and a diff layer holding every kind of entry, a
// MAP snapshot, tombstones and subscriptions, and returns both paths.
func populated(t *testing.T) (base, diff string) {
	t.Helper()
	base = newBase(t)
	{
		s, _, closeAll := open(t, base, diffdisk.Options{})
		must(t, s.PublishU32("u", 7, "o", 0))
		must(t, s.PublishString("s", "text", "o", 0))
		must(t, s.PublishMem("m", []byte{1, 2, 3}, "o", datastore.Private))
		must(t, s.PublishLabel("l", 10, "o", 0))
		must(t, s.PublishMap("map", datastore.MapRange{Source: datastore.SourceHibernate, Offset: 4096, Length: 16}, "o", 0))
		_, err := s.SnapshotMap("map", "o")
		must(t, err)
		must(t, s.Subscribe("watcher", "u|s", nil, datastore.Initial))
		closeAll()
	}
	diff = newDiff(t, base, "diff.hib")
	s, _, closeAll := open(t, diff, diffdisk.Options{})
	must(t, s.Subscribe("w2", ".*", []datastore.Type{datastore.U32}, datastore.Initial))
	must(t, s.PublishU32("u", 8, "o", datastore.Overwrite))
	must(t, s.Delete("s", datastore.String, "o"))
	must(t, s.PublishLabel("l2", 10, "o", datastore.Overwrite)) // renames l
	_, err := s.SnapshotMap("map", "o")
	must(t, err)
	if _, _, err := s.Check("w2"); err != nil {
		t.Fatal(err)
	}
	closeAll()
	return base, diff
}

func mustCheck(t *testing.T, path string) *sqlitelayer.Report {
	t.Helper()
	r, err := diffdisk.Check(path)
	if err != nil {
		t.Fatalf("check %s: %v", path, err)
	}
	return r
}

// TestCheckHealthyDatastore: a chain holding every kind of entry checks
// clean (checktest checks both layers again at the end).
func TestCheckHealthyDatastore(t *testing.T) {
	base, diff := populated(t)
	for _, path := range []string{base, diff} {
		if r := mustCheck(t, path); !r.OK() || len(r.Notes) > 0 {
			t.Errorf("healthy layer:\n%s", r)
		}
	}
}

// TestCheckDamagedDatastore damages one rule at a time, all in one layer,
// and wants every one reported: the check does not stop at the first.
func TestCheckDamagedDatastore(t *testing.T) {
	base, diff := populated(t)
	long := strings.Repeat("k", datastore.MaxKeyLen+1)
	storetest.Exec(t, base,
		"PRAGMA foreign_keys = OFF",
		// A value that does not fit its type, and a tombstone with one.
		"UPDATE datastore SET value = 'x' WHERE key = 'u' AND type = 'u32'",
		"INSERT INTO datastore (key, type, deleted, num, seq, changed_at) VALUES ('gone', 'u32', 1, 5, 100, '2026-01-02T03:04:05Z')",
		// A key checkKey refuses, a change number below 1, a bad time.
		"UPDATE datastore SET key = '"+long+"', seq = 0 WHERE key = 'm'",
		"UPDATE datastore SET changed_at = 'yesterday' WHERE key = 'l'",
		// A MAP range past the hibernate file, a snapshot of the wrong length.
		"UPDATE datastore SET map_offset = 1 << 50 WHERE key = 'map'",
		"UPDATE datastore_snapshots SET data = x'00' WHERE key = 'map'",
		// A cursor past the last change; a pending report without its
		// subscription; one its subscription does not match.
		"UPDATE datastore_subscriptions SET cursor = 1000",
		"INSERT INTO datastore_pending (owner, key, type) VALUES ('ghost', 'u', 'u32')",
		"INSERT INTO datastore_pending (owner, key, type) VALUES ('watcher', 'zz', 'u32')",
	)
	checktest.Damaged(t, base)
	checktest.Damaged(t, diff, "MAP snapshots whose length is not their MAP's") // the base's snapshot shows through
	r := mustCheck(t, base)
	all := strings.Join(r.Problems, "\n")
	for _, want := range []string{
		`datastore: 1 entries whose value does not fit their type: "u" (u32)`,
		`datastore: 1 tombstones (deleted entries) that hold a value: "gone" (u32)`,
		`entries whose key is not 1 to 79 bytes of UTF-8`,
		`entries with a change number (seq) below 1`,
		`entries whose changed_at is not RFC 3339: "l" (label)`,
		`MAP entries whose range is not in their file: "map" (map)`,
		`MAP snapshots whose length is not their MAP's: "map" #1 (1 bytes, the MAP has 16)`,
		`subscriptions whose cursor is outside [0, 100], the layer's last change: "watcher" (cursor 1000)`,
		`pending reports without their subscription (orphans): "ghost" for "u" (u32)`,
		`pending reports that their subscription does not match: "watcher" for "zz" (u32)`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("check does not report %q; it says:\n%s", want, all)
		}
	}

	// A strict open runs the same checks of the file.
	if _, err := diffdisk.Open(base, diffdisk.Options{ReadOnly: true, Strict: true}); !errors.Is(err, disklayer.ErrCorrupt) || !strings.Contains(err.Error(), "datastore:") {
		t.Errorf("strict open of the damaged layer: %v, want ErrCorrupt naming the datastore", err)
	}
}

// TestCheckDatastoreChain: what holds only across the chain. Each layer's
// rows are fine in their file, but resolved through the chain two live
// labels share a number, and a snapshot outlives its MAP.
func TestCheckDatastoreChain(t *testing.T) {
	base, diff := populated(t)
	// Each file on its own is fine.
	storetest.Exec(t, base, "UPDATE datastore SET key = 'k' WHERE key = 'l'") // the diff's tombstone of l no longer hides 10
	storetest.Exec(t, diff,
		"DELETE FROM datastore_snapshots", // the base's snapshot of map shows through
		"INSERT INTO datastore (key, type, deleted, seq, changed_at) VALUES ('map', 'map', 1, 51, '2026-01-02T03:04:05Z')",
	)
	checktest.Damaged(t, diff, "label numbers that name two live labels", "MAP snapshots whose MAP is deleted or missing in the chain")
	r := mustCheck(t, diff)
	all := strings.Join(r.Problems, "\n")
	if strings.Count(all, "datastore:") != 2 {
		t.Errorf("want exactly the two chain problems, got:\n%s", r)
	}
	if r := mustCheck(t, base); !r.OK() {
		t.Errorf("the base is unchanged and fine:\n%s", r)
	}
}
