package hibfile_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

func TestSaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	base := newBase(t, dir, "base.db")
	s, img := synthetic(1, 20, 5, 2, 3, 4, 8)
	res := mustSave(t, base, s, img)
	if res.SnapshotID == 0 || res.StoredBytes == 0 {
		t.Fatalf("SaveResult = %+v", res)
	}
	v := latestView(t, base)
	got, err := v.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s, got); diff != "" {
		t.Errorf("Load differs from what was saved (-saved +loaded):\n%s", diff)
	}
	// Every stored range reads back through the blob.
	for _, p := range got.Processes {
		for _, m := range p.Mappings {
			if m.BlobOffset == nil {
				continue
			}
			want := make([]byte, m.Size)
			img.ReadAt(want, *m.BlobOffset)
			gotBytes := make([]byte, m.Size)
			if err := v.ReadBlob(gotBytes, *m.BlobOffset); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(want, gotBytes) {
				t.Fatalf("pid %d mapping %#x: blob differs", p.PID, m.VirtualAddr)
			}
		}
	}
}

func TestSaveRefusesSecondSnapshot(t *testing.T) {
	base := newBase(t, t.TempDir(), "base.db")
	s, img := synthetic(1, 2, 2, 1, 1, 1, 1)
	mustSave(t, base, s, img)
	if _, err := hibfile.Save(base, s, img); !errors.Is(err, hibfile.ErrSnapshotExists) {
		t.Fatalf("second Save = %v, want ErrSnapshotExists", err)
	}
}

func TestSaveInvalidWritesNothing(t *testing.T) {
	base := newBase(t, t.TempDir(), "base.db")
	s, img := synthetic(1, 2, 2, 1, 1, 1, 1)
	s.Processes[1].PID = s.Processes[0].PID
	if _, err := hibfile.Save(base, s, img); err == nil {
		t.Fatal("Save with a duplicate pid succeeded")
	}
	// Overlapping ranges are refused too.
	s, img = synthetic(1, 2, 2, 1, 2, 1, 1)
	*s.Processes[1].Mappings[0].BlobOffset = *s.Processes[0].Mappings[0].BlobOffset
	if _, err := hibfile.Save(base, s, img); err == nil {
		t.Fatal("Save with overlapping blob ranges succeeded")
	}
	if _, err := hibfile.Latest(base); !errors.Is(err, hibfile.ErrNoSnapshot) {
		t.Fatalf("after failed saves: %v, want ErrNoSnapshot", err)
	}
}

// hibRows counts the layer's own hibernate_blocks rows.
func hibRows(t testing.TB, path string) int64 {
	t.Helper()
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT count(*) FROM hibernate_blocks")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	stmt.Step()
	return stmt.ColumnInt64(0)
}

func TestStackedSaveStoresOnlyChangedBlocks(t *testing.T) {
	dir := t.TempDir()
	base := newBase(t, dir, "base.db")
	s, img := synthetic(2, 10, 3, 2, 8, 2, 4)
	mustSave(t, base, s, img)

	// Same processes again, 5 pages changed in total, one zeroed.
	prev, err := hibfile.Latest(base)
	if err != nil {
		t.Fatal(err)
	}
	next, _ := synthetic(2, 10, 3, 2, 8, 2, 4)
	next.Timestamp = next.Timestamp.Add(1e9)
	hibfile.Layout(next, prev, 4096, func(_ int64, m hibfile.Mapping) bool { return m.Size > 4096 })
	if diff := cmp.Diff(prev.Processes, next.Processes); diff != "" {
		t.Fatalf("Layout did not keep the offsets of unchanged mappings:\n%s", diff)
	}
	img2 := &hibfile.MemoryImage{}
	changed := map[int64]bool{}
	for _, p := range next.Processes {
		buf := make([]byte, p.RegistersSize)
		img.ReadAt(buf, *p.RegistersOffset)
		img2.Put(*p.RegistersOffset, buf)
		for _, m := range p.Mappings {
			if m.BlobOffset == nil {
				continue
			}
			data := make([]byte, m.Size)
			img.ReadAt(data, *m.BlobOffset)
			img2.Put(*m.BlobOffset, data)
		}
	}
	for i, pg := range []struct{ proc, page int }{{0, 0}, {3, 5}, {3, 6}, {9, 7}, {5, 2}} {
		m := next.Processes[pg.proc].Mappings[0]
		off := *m.BlobOffset + int64(pg.page)*4096
		data := make([]byte, 4096)
		if i == 4 {
			// all zeros: must become a tombstone over the parent's data
		} else {
			img.ReadAt(data, off)
			data[100] ^= 0xff
		}
		img2.Put(off, data)
		changed[off/4096] = true
	}
	diff := newDiff(t, dir, "diff.db", base)
	res := mustSave(t, diff, next, img2)
	if res.ChangedBlocks != 5 {
		t.Errorf("ChangedBlocks = %d, want 5 (%+v)", res.ChangedBlocks, res)
	}
	if n := hibRows(t, diff); n != 5 {
		t.Errorf("diff layer holds %d hibernate_blocks rows, want 5", n)
	}
	// The diff layer's view reads the new content; the base's the old.
	v := latestView(t, diff)
	for blk := range changed {
		want := make([]byte, 4096)
		img2.ReadAt(want, blk*4096)
		got := make([]byte, 4096)
		if err := v.ReadBlob(got, blk*4096); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("block %d reads back wrong through the chain", blk)
		}
	}
}

// TestSaveChainOneTransaction: what SaveChain's caller adds (a machine's
// device state) commits with the snapshot or not at all; before, vm
// hibernate committed them in two transactions, and a kill between left
// a snapshot without device state.
func TestSaveChainOneTransaction(t *testing.T) {
	dir := t.TempDir()
	base := newBase(t, dir, "base.db")
	top := newDiff(t, dir, "top.db", base)
	d, err := diffdisk.Open(top, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, img := synthetic(1, 2, 2, 1, 1, 1, 1)
	failed := errors.New("device state not saved")
	topLayer := d.Layer(0).(*sqlitelayer.File)
	if _, err := hibfile.SaveChain(d, s, img, func(tx *sqlitelayer.Tx, id int64) error {
		if err := tx.Conn().Exec("CREATE TABLE extra (x)"); err != nil {
			return err
		}
		if err := tx.MarkReadOnly(); err != nil {
			return err
		}
		return failed
	}); !errors.Is(err, failed) {
		t.Fatalf("SaveChain = %v, want the hook's error", err)
	}
	if topLayer.Info().ReadOnly {
		t.Fatal("a failed SaveChain left the layer marked read-only")
	}
	var sawID int64
	res, err := hibfile.SaveChain(d, s, img, func(tx *sqlitelayer.Tx, id int64) error {
		sawID = id
		if err := tx.Conn().Exec("CREATE TABLE extra (x)"); err != nil {
			return err
		}
		return tx.MarkReadOnly()
	})
	if err != nil {
		t.Fatalf("SaveChain after a failed one: %v (a snapshot of the failed one was left?)", err)
	}
	if sawID != res.SnapshotID {
		t.Errorf("hook saw snapshot %d, SaveChain returned %d", sawID, res.SnapshotID)
	}
	if !topLayer.Info().ReadOnly {
		t.Error("the layer marked read-only in the snapshot's transaction does not say so")
	}
	if _, err := d.WriteAt(make([]byte, 4096), 0); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("write after the snapshot marked the layer read-only: %v, want ErrReadOnly", err)
	}
}
