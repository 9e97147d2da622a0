package sqlitelayer_test

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// extentsBothWays maps [off, off+n) of the layer at path, opened
// read-only, from its allocation summary and from its rows.
func extentsBothWays(t *testing.T, path string, off, n int64) (summary, rows []disklayer.Extent) {
	t.Helper()
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	collect := func() []disklayer.Extent {
		var out []disklayer.Extent
		for e, err := range f.Extents(off, n) {
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
		return out
	}
	summary = collect()
	restore := sqlitelayer.SetSummaryOffForTest(true)
	defer restore()
	return summary, collect()
}

// summaryState says whether the layer at path has an allocation summary
// valid for its generation, and how many runs it holds.
func summaryState(t *testing.T, path string) (valid bool, runs int64) {
	t.Helper()
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT allocation_generation IS generation, (SELECT count(*) FROM allocation) FROM layer")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	if !stmt.Step() {
		t.Fatal(stmt.Err())
	}
	return stmt.ColumnBool(0), stmt.ColumnInt64(1)
}

// TestSummaryMapsAsRows: a layer written by Bulk (as convert writes a
// base) and one written through SQLite with tombstones, then summarized,
// map the same from their allocation summary as from their rows, over
// random ranges; the summary holds one row per run, not per sector.
func TestSummaryMapsAsRows(t *testing.T) {
	const size = 64 << 20
	rng := rand.New(rand.NewPCG(7, 8))
	// Runs of data with holes between them, some a sector long.
	type span struct{ off, n int64 }
	var spans []span
	for off := int64(0); off < size-(1<<20); {
		off += int64(rng.IntN(64)) * 4096
		n := int64(1+rng.IntN(48)) * 4096
		spans = append(spans, span{off, n})
		off += n + 4096
	}

	bulkPath := newLayerPath(t, "bulk.db")
	b, err := sqlitelayer.CreateBulk(bulkPath, sqlitelayer.CreateOptions{SectorSize: 4096, Size: size}, sqlitelayer.BulkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range spans {
		mustBulkWrite(t, b, fill(int(s.n), byte(i)), s.off)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if valid, runs := summaryState(t, bulkPath); !valid || runs != int64(len(spans)) {
		t.Fatalf("bulk layer: summary valid %v with %d runs; want valid with %d", valid, runs, len(spans))
	}

	// Through SQLite: a diff layer with data and tombstones.
	dir := t.TempDir()
	writtenPath := checkedLayer(t, dir+"/written.db")
	f, err := sqlitelayer.Create(writtenPath, sqlitelayer.CreateOptions{SectorSize: 4096, Size: size, Parent: rawParent(t, dir, size)})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range spans {
		if i%3 == 0 {
			if err := f.Zero(s.off, s.n); err != nil {
				t.Fatal(err)
			}
			continue
		}
		mustWrite(t, f, fill(int(s.n), byte(i)), s.off)
	}
	if err := f.WriteSummary(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if valid, runs := summaryState(t, writtenPath); !valid || runs == 0 || runs > int64(len(spans)) {
		t.Fatalf("written layer: summary valid %v with %d runs; want valid with 1..%d", valid, runs, len(spans))
	}

	for _, path := range []string{bulkPath, writtenPath} {
		for range 200 {
			off := int64(rng.IntN(size/4096)) * 4096
			n := min(int64(1+rng.IntN(4096))*4096, size-off)
			if rng.IntN(4) == 0 { // unaligned
				off += int64(rng.IntN(4096))
				n = min(n, size-off)
			}
			summary, rows := extentsBothWays(t, path, off, n)
			if !slices.Equal(summary, rows) {
				t.Fatalf("%s [%d, +%d): from the summary %v, from the rows %v", path, off, n, summary, rows)
			}
		}
	}
}

// TestSummaryGoesStale: a write after the summary moves the generation,
// and a read-only open then maps from the rows (the new sector shows).
func TestSummaryGoesStale(t *testing.T) {
	path := newLayerPath(t, "l.db")
	f := createLayer(t, path, sqlitelayer.CreateOptions{SectorSize: 4096, Size: 8 << 20})
	mustWrite(t, f, fill(8192, 1), 0)
	if err := f.WriteSummary(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, fill(4096, 2), 1<<20)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if valid, _ := summaryState(t, path); valid {
		t.Fatal("summary still valid after a write")
	}
	summary, rows := extentsBothWays(t, path, 0, 8<<20)
	want := []disklayer.Extent{{Off: 0, Len: 8192, Kind: disklayer.Data}, {Off: 8192, Len: 1<<20 - 8192, Kind: disklayer.Absent},
		{Off: 1 << 20, Len: 4096, Kind: disklayer.Data}, {Off: 1<<20 + 4096, Len: 7<<20 - 4096, Kind: disklayer.Absent}}
	if !slices.Equal(summary, want) || !slices.Equal(rows, want) {
		t.Fatalf("map after a write: %v (rows: %v), want %v", summary, rows, want)
	}
}

// TestSummaryThatLiesIsCaught: a summary edited to disagree with the
// rows (an SQL client; the allocation table has no generation trigger)
// is a problem for check, and repair drops it without touching a sector.
func TestSummaryThatLiesIsCaught(t *testing.T) {
	path := t.TempDir() + "/l.db"
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{SectorSize: 4096, Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, fill(8192, 1), 0)
	if err := f.WriteSummary(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec("UPDATE allocation SET count = count + 5"); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	r, err := sqlitelayer.Check(path)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK() {
		t.Fatal("check found nothing wrong with a summary claiming 5 sectors that have no row")
	}
	if r, err = sqlitelayer.Repair(path); err != nil || !r.OK() {
		t.Fatalf("repair: %v\n%s", err, r)
	}
	if valid, runs := summaryState(t, path); valid || runs != 0 {
		t.Fatalf("after repair: summary valid %v with %d runs; want none", valid, runs)
	}
	if kinds := rowKinds(t, path, "sectors"); len(kinds) != 2 {
		t.Fatalf("repair changed the sectors: %v", kinds)
	}
	checkedLayer(t, path)
}

// TestSealKeepsASummary: a sealed layer carries a summary valid for its
// generation, and maps from it as from its rows.
func TestSealKeepsASummary(t *testing.T) {
	path := newLayerPath(t, "l.db")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, fill(3*4096, 1), 4096)
	if err := f.Zero(1<<20, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlitelayer.Seal(path, sqlitelayer.SealOptions{}); err != nil {
		t.Fatal(err)
	}
	if valid, runs := summaryState(t, path); !valid || runs != 1 {
		t.Fatalf("sealed layer: summary valid %v with %d runs; want valid with 1 (a base keeps no tombstones)", valid, runs)
	}
	summary, rows := extentsBothWays(t, path, 0, 8<<20)
	if !slices.Equal(summary, rows) {
		t.Fatalf("sealed layer maps %v from its summary, %v from its rows", summary, rows)
	}
}
