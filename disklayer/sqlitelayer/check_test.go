package sqlitelayer_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

// damagedLayer makes a base layer with good data in sectors 0-3 and then
// damages it with raw SQL in several independent ways.
func damagedLayer(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "damaged.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 16 * 4096})
	mustWrite(t, f, fill(4*4096, 1), 0)
	mustWrite(t, f.Hibernate(), fill(4096, 2), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	storetest.Exec(t, path,
		"INSERT INTO sectors VALUES (16, zeroblob(4096))",                  // one past the end
		"INSERT INTO sectors VALUES (-1, randomblob(4096))",                // negative
		"INSERT INTO sectors VALUES (5, randomblob(100))",                  // short blob
		"INSERT INTO sectors VALUES (6, 'text, not a blob')",               // wrong type
		"INSERT INTO sectors VALUES (7, zeroblob(4096))",                   // all-zero data
		"INSERT INTO sectors VALUES (8, NULL)",                             // tombstone in a base
		"INSERT INTO hibernate_blocks VALUES (1, randomblob(4097))",        // long blob
		"INSERT INTO hibernate_blocks VALUES (2, zeroblob(4096))",          // all-zero data
		"INSERT INTO hibernate_blocks VALUES (17179869184, randomblob(1))", // past 2^46 bytes, and short
	)
	return path
}

func TestCheckReportsEveryProblem(t *testing.T) {
	path := damagedLayer(t)
	r, err := sqlitelayer.Check(path)
	if err != nil {
		t.Fatal(err)
	}
	wantProblems := []string{
		"sectors: 2 rows past the end of the 16-block table (or negative) (sector -1, 16)",
		"sectors: 2 blobs that are not exactly one block long (sector 5, 6)",
		"sectors: 2 all-zero data blobs (should be tombstones or no rows) (sector 7, 16)",
		"sectors: 1 tombstones in a layer without a parent (sector 8)",
		"hibernate_blocks: 1 rows past the end of the 17179869184-block table (or negative) (block 17179869184)",
		"hibernate_blocks: 2 blobs that are not exactly one block long (block 1, 17179869184)",
		"hibernate_blocks: 1 all-zero data blobs (should be tombstones or no rows) (block 2)",
	}
	if strings.Join(r.Problems, "\n") != strings.Join(wantProblems, "\n") {
		t.Errorf("Check problems:\n%s\nwant:\n%s", strings.Join(r.Problems, "\n"), strings.Join(wantProblems, "\n"))
	}
	// Leaks are the problems whose repair loses nothing: they waste
	// space only (hibdisk check exits 3 when there are no others).
	wantLeaks := []string{wantProblems[2], wantProblems[3], wantProblems[6]}
	if strings.Join(r.Leaks, "\n") != strings.Join(wantLeaks, "\n") {
		t.Errorf("Check leaks:\n%s\nwant:\n%s", strings.Join(r.Leaks, "\n"), strings.Join(wantLeaks, "\n"))
	}
	if r.OK() {
		t.Error("OK() is true for a damaged layer")
	}
	if !strings.Contains(r.String(), "problem: sectors: 2 rows past the end") {
		t.Errorf("String() does not list the problems:\n%s", r)
	}

	// Without Force, nothing that holds data is dropped: the notes say
	// what --force would drop, and those problems remain.
	soft, err := sqlitelayer.Repair(path)
	if err != nil {
		t.Fatal(err)
	}
	wantSoft := []string{
		"sectors: 1 deleted tombstones of a layer without a parent (sector 8)",
		"sectors: 2 deleted all-zero data blobs (a base layer reads zeros without rows) (sector 7, 16)",
		"hibernate_blocks: 1 deleted all-zero data blobs (a base layer reads zeros without rows) (block 2)",
	}
	if !sameSet(soft.Repairs, wantSoft) {
		t.Errorf("Repairs without Force:\n%s\nwant (any order):\n%s", strings.Join(soft.Repairs, "\n"), strings.Join(wantSoft, "\n"))
	}
	if soft.OK() || !strings.Contains(strings.Join(soft.Notes, "\n"), "needs --force") {
		t.Errorf("Repair without Force: want problems left and notes naming --force:\n%s", soft)
	}
	if rows := rowKinds(t, path, "sectors"); rows[-1] == "" || rows[5] == "" || rows[6] == "" {
		t.Errorf("Repair without Force dropped data rows: %v", rows)
	}

	rep, err := sqlitelayer.RepairWith(path, sqlitelayer.RepairOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Errorf("problems remain after Repair with Force:\n%s", rep)
	}
	wantRepairs := []string{
		"sectors: 1 deleted rows past the end (their data is lost) (sector -1)",
		"sectors: 2 dropped blobs of the wrong length (their data is lost; the parent, or zeros, show through) (sector 5, 6)",
		"hibernate_blocks: 1 deleted rows past the end (their data is lost) (block 17179869184)",
		"hibernate_blocks: 1 dropped blobs of the wrong length (their data is lost; the parent, or zeros, show through) (block 1)",
	}
	if !sameSet(rep.Repairs, wantRepairs) {
		t.Errorf("Repairs:\n%s\nwant (any order):\n%s", strings.Join(rep.Repairs, "\n"), strings.Join(wantRepairs, "\n"))
	}
	// Good data survived.
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := mustRead(t, f, 0, 4*4096); !bytes.Equal(got, fill(4*4096, 1)) {
		t.Error("Repair changed good sectors")
	}
	if got := mustRead(t, f.Hibernate(), 0, 4096); !bytes.Equal(got, fill(4096, 2)) {
		t.Error("Repair changed a good hibernate block")
	}
	// Repairing a consistent file changes nothing.
	again, err := sqlitelayer.Repair(path)
	if err != nil || !again.OK() || len(again.Repairs) != 0 {
		t.Errorf("second Repair: %v, %+v", err, again)
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestCheckLayerRow(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l.hibdisk")
	parent := rawParent(t, dir, 8*4096)
	createLayer(t, path, sqlitelayer.CreateOptions{Size: 8 * 4096, Parent: parent}).Close()
	storetest.Exec(t, path, "UPDATE layer SET disk_size = 8 * 4096 + 100, created_at = 'yesterday', parent_format = NULL")
	r, err := sqlitelayer.Check(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"disk_size 32868 is not a multiple", "created_at \"yesterday\"", "parent format \"\""} {
		if !strings.Contains(strings.Join(r.Problems, "\n"), want) {
			t.Errorf("Check does not report %q:\n%s", want, r)
		}
	}
	rep, err := sqlitelayer.Repair(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rep.Repairs, "\n"); !strings.Contains(got, "parent_format to 'raw'") || !strings.Contains(got, "rounded disk_size up") {
		t.Errorf("Repairs:\n%s", got)
	}
	// created_at cannot be derived: it remains a problem.
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "created_at") {
		t.Errorf("remaining problems: %q, want only created_at", rep.Problems)
	}
}

func TestCheckParent(t *testing.T) {
	dir := t.TempDir()
	ppath := checkedLayer(t, filepath.Join(dir, "base.hibdisk"))
	p := createLayer(t, ppath, sqlitelayer.CreateOptions{Size: 8 * 4096})
	pinfo := p.Info()
	p.Close()
	ref := &disklayer.ParentRef{Path: "base.hibdisk", Format: disklayer.FormatHibdisk, UUID: pinfo.UUID, Size: pinfo.DiskSize}
	cpath := filepath.Join(dir, "child.hibdisk")
	createLayer(t, cpath, sqlitelayer.CreateOptions{Size: 8 * 4096, Parent: ref}).Close()
	if r, err := sqlitelayer.Check(cpath); err != nil || !r.OK() {
		t.Fatalf("Check of a good child: %v\n%s", err, r)
	}

	problem := func(t *testing.T, want string) {
		t.Helper()
		r, err := sqlitelayer.Check(cpath)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Problems) != 1 || !strings.Contains(r.Problems[0], want) || !strings.Contains(r.Problems[0], "base.hibdisk") {
			t.Errorf("Check problems %q, want one naming the parent and containing %q", r.Problems, want)
		}
		if err := sqlitelayer.VerifyParent(cpath, *ref); !errors.Is(err, disklayer.ErrParentMismatch) {
			t.Errorf("VerifyParent: %v, want ErrParentMismatch", err)
		}
	}
	t.Run("other uuid", func(t *testing.T) {
		storetest.Exec(t, cpath, "UPDATE layer SET parent_uuid = 'f00'")
		ref.UUID = "f00"
		problem(t, "uuid is "+pinfo.UUID+", the layer was created over f00")
		storetest.Exec(t, cpath, "UPDATE layer SET parent_uuid = '"+pinfo.UUID+"'")
		ref.UUID = pinfo.UUID
	})
	t.Run("other size", func(t *testing.T) {
		storetest.Exec(t, cpath, "UPDATE layer SET parent_size = 4096")
		ref.Size = 4096
		problem(t, "size is 32768 bytes, the layer was created over 4096 bytes")
		storetest.Exec(t, cpath, "UPDATE layer SET parent_size = 32768")
		ref.Size = 32768
	})
	t.Run("missing", func(t *testing.T) {
		if err := os.Rename(ppath, ppath+".moved"); err != nil {
			t.Fatal(err)
		}
		problem(t, "unreachable")
		if err := os.Rename(ppath+".moved", ppath); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("raw digest verifier", func(t *testing.T) {
		rpath := filepath.Join(dir, "over-raw.hibdisk")
		raw := rawParent(t, dir, 8*4096)
		createLayer(t, rpath, sqlitelayer.CreateOptions{Size: 8 * 4096, Parent: raw}).Close()
		r, err := sqlitelayer.Check(rpath)
		if err != nil || !r.OK() || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "identity not compared") {
			t.Errorf("Check without a verifier: %v, %+v", err, r)
		}
		var called string
		r, err = sqlitelayer.CheckWith(rpath, sqlitelayer.CheckOptions{VerifyExternalParent: func(p string, ref disklayer.ParentRef) error {
			called = p
			return errors.New("content digest differs")
		}})
		if err != nil || r.OK() || called != filepath.Join(dir, "parent.img") {
			t.Errorf("Check with a failing verifier: %v, %+v, verifier saw %q", err, r, called)
		}
	})
}

func TestCheckRefusesNonLayers(t *testing.T) {
	dir := t.TempDir()
	random := filepath.Join(dir, "random")
	if err := os.WriteFile(random, bytes.Repeat([]byte("raw disk "), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlitelayer.Check(random); !errors.Is(err, disklayer.ErrNotLayer) {
		t.Errorf("Check(random bytes): %v, want ErrNotLayer", err)
	}
	newer := filepath.Join(dir, "newer")
	createLayer(t, newer, sqlitelayer.CreateOptions{Size: 4096}).Close()
	storetest.Exec(t, newer, "PRAGMA user_version = 99")
	if _, err := sqlitelayer.Check(newer); !errors.Is(err, disklayer.ErrUnsupportedVersion) {
		t.Errorf("Check(user_version 99): %v, want ErrUnsupportedVersion", err)
	}
	if _, err := sqlitelayer.Repair(newer); !errors.Is(err, disklayer.ErrUnsupportedVersion) {
		t.Errorf("Repair(user_version 99): %v, want ErrUnsupportedVersion", err)
	}
}

func TestCheckTruncatedIsNotRepaired(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 4 << 20})
	mustWrite(t, f, fill(4<<20, 1), 0)
	f.Close()
	st, _ := os.Stat(path)
	if err := os.Truncate(path, st.Size()/2); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	r, err := sqlitelayer.Repair(path)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() || len(r.Repairs) != 0 || !strings.Contains(strings.Join(r.Problems, "\n"), "truncated") {
		t.Errorf("Repair of a truncated file: %+v", r)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("Repair modified a structurally damaged file")
	}
}

// TestRepairTrustsBlobsOverDamagedRow: a damaged layer row makes good
// blobs look wrong; repair fixes the row from the blobs (sector_size) or
// leaves the data alone (disk_size), never deletes it. Before, repair
// dropped every data sector when sector_size read 512, and every row past
// a shrunken disk_size.
func TestRepairTrustsBlobsOverDamagedRow(t *testing.T) {
	for _, damage := range []string{"UPDATE layer SET sector_size = 512", "UPDATE layer SET disk_size = 4096"} {
		t.Run(damage, func(t *testing.T) {
			path := newLayerPath(t, "l.db")
			f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 64 << 10})
			mustWrite(t, f, fill(64<<10, 7), 0)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			storetest.Exec(t, path, damage)
			rep, err := sqlitelayer.Repair(path)
			if err != nil {
				t.Fatal(err)
			}
			if rows := rowKinds(t, path, "sectors"); len(rows) != 16 {
				t.Fatalf("repair of %q left %d of 16 data rows:\n%s", damage, len(rows), rep)
			}
			if strings.Contains(damage, "sector_size") {
				if !rep.OK() || len(rep.Repairs) != 1 || !strings.Contains(rep.Repairs[0], "set sector_size to 4096") {
					t.Errorf("want the row repaired from the blobs:\n%s", rep)
				}
				g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				defer g.Close()
				if got := mustRead(t, g, 0, 64<<10); !bytes.Equal(got, fill(64<<10, 7)) {
					t.Error("data does not read back after the row repair")
				}
			} else {
				if rep.OK() || !strings.Contains(strings.Join(rep.Notes, "\n"), "needs --force") {
					t.Errorf("want the rows past disk_size reported, kept, and --force named:\n%s", rep)
				}
				storetest.Exec(t, path, "UPDATE layer SET disk_size = 65536") // undo, for the cleanup check
			}
		})
	}
}

// TestCheckNamesUncheckedTables: a table holding rows that no registered
// check covers is not silently passed over: the report says it was not
// checked (a note, not a problem: the table may be someone's own).
func TestCheckNamesUncheckedTables(t *testing.T) {
	path := newLayerPath(t, "extra.db")
	createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20}).Close()
	storetest.Exec(t, path, "CREATE TABLE empty_extra (x)", "CREATE TABLE extra (x)", "INSERT INTO extra VALUES (1)")
	r, err := sqlitelayer.Check(path)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || len(r.Notes) != 1 || !strings.HasSuffix(r.Notes[0], "tables not checked (no check for them is linked into this program): extra") {
		t.Errorf("layer with a table of its own:\n%s", r)
	}
}
