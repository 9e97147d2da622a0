package hibfile_test

import (
	"bytes"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/hibfile"
)

func ramSnapshot(size int64) *hibfile.Snapshot {
	return &hibfile.Snapshot{Source: "test", Processes: []hibfile.Process{{PID: 1, Name: "ram", MemorySize: size,
		Mappings: []hibfile.Mapping{{Size: size, PageSize: 4096, Permissions: "rw", BlobOffset: ptr(int64(0))}}}}}
}

// TestSaveChainIndexed: a save stacked on a snapshot, comparing with a
// PageIndex of the snapshot's content instead of reading it, stores
// exactly the blocks a save that reads the chain below stores; and
// StoredBlocks rebuilds the stacked content from the rows, in block
// order.
func TestSaveChainIndexed(t *testing.T) {
	const size = 256 << 10
	dir := t.TempDir()
	ram1 := make([]byte, size)
	ramImage{size: size, every: 3}.ReadAt(ram1, 0)
	ram2 := bytes.Clone(ram1)
	ram2[5*4096] ^= 1            // changed
	clear(ram2[6*4096 : 7*4096]) // data page now zero
	ram2[7*4096+100] = 7         // zero page now data
	ram2[63*4096+4095] = 9       // last page
	base := newBase(t, dir, "base.db")
	mustSaveImage(t, base, ramSnapshot(size), ram1)
	index := hibfile.NewPageIndex(size, 4096)
	index.Add(ram1, 0)

	want := map[int64]bool{5: true, 6: true, 7: true, 63: true}
	for _, indexed := range []bool{false, true} {
		top := newDiff(t, dir, map[bool]string{false: "read.db", true: "indexed.db"}[indexed], base)
		d, err := diffdisk.Open(top, diffdisk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var below hibfile.BelowIndex
		if indexed {
			below = index
		}
		res, err := hibfile.SaveChainIndexed(d, ramSnapshot(size), bytes.NewReader(ram2), below, nil)
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		got := ownBlocks(t, top)
		if len(got) != len(want) || res.ChangedBlocks != int64(len(want)) {
			t.Errorf("indexed=%v: stored blocks %v (%d changed), want %v", indexed, got, res.ChangedBlocks, want)
		}
		for _, b := range got {
			if !want[b] {
				t.Errorf("indexed=%v: block %d stored, it did not change", indexed, b)
			}
		}
		rebuilt := make([]byte, size)
		v := latestView(t, top)
		last := int64(-1)
		if err := v.StoredBlocks(size, func(off int64, data []byte) error {
			if off <= last {
				t.Errorf("indexed=%v: StoredBlocks gave block %#x after %#x: want ascending, each once", indexed, off, last)
			}
			last = off
			if data != nil {
				copy(rebuilt[off:], data)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(rebuilt, ram2) {
			t.Errorf("indexed=%v: StoredBlocks does not rebuild the saved content", indexed)
		}
	}
	if same, known := index.Same(ram2[5*4096:6*4096], 5*4096); !known || same {
		t.Errorf("Same(changed page) = %v, %v", same, known)
	}
	if _, known := index.Same(ram2[:4096], size); known {
		t.Error("Same past the index's end claims to know")
	}
}

func mustSaveImage(t *testing.T, path string, s *hibfile.Snapshot, ram []byte) {
	t.Helper()
	if _, err := hibfile.Save(path, s, bytes.NewReader(ram)); err != nil {
		t.Fatal(err)
	}
}
