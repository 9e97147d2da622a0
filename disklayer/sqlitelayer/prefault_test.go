package sqlitelayer_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// TestPrefaultKeepsEveryWrite: Prefault extends the WAL with zeros past
// its frames while writes are batched and committed around it. Every
// write stays readable, a copy of the files taken after a Flush (what a
// kill -9 leaves) recovers every flushed write, and the layer checks
// clean.
func TestPrefaultKeepsEveryWrite(t *testing.T) {
	path := newLayerPath(t, "p.db")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 64 << 20})
	bs := f.SectorSize()
	want := make([]byte, f.Size())
	write := func(seed byte, off int64, n int) {
		p := fill(n, seed)
		mustWrite(t, f, p, off)
		copy(want[off:], p)
	}
	write(1, 0, 1<<20)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	write(2, 4<<20, 3*bs) // batched, not committed
	if err := f.Prefault(); err != nil {
		t.Fatalf("Prefault: %v", err)
	}
	st, err := os.Stat(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() < 64<<20 {
		t.Errorf("WAL is %d bytes after Prefault, want it extended to journal_size_limit", st.Size())
	}
	write(3, 8<<20, 2<<20)
	if got := mustRead(t, f, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("after Prefault the layer reads differently at %d", firstDifference(got, want))
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}

	// What a kill -9 now leaves: the database and its WAL, frames and the
	// zeros after them.
	crash := filepath.Join(t.TempDir(), "crash.db")
	for _, suffix := range []string{"", "-wal"} {
		b, err := os.ReadFile(path + suffix)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crash+suffix, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	checkedLayer(t, crash)
	g, err := sqlitelayer.Open(crash, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := mustRead(t, g, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("the copy recovered from the WAL reads differently at %d", firstDifference(got, want))
	}
}

// TestScratchLayer: a Scratch layer written past its page cache in several
// batches reads back whole after Close as an ordinary WAL layer, with no
// WAL file left, and checks clean.
func TestScratchLayer(t *testing.T) {
	path := newLayerPath(t, "s.db")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 128 << 20, Scratch: true})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, f.Size())
	for i, off := range []int64{0, 40 << 20, 100 << 20} {
		p := fill(24<<20, byte(i+1))
		mustWrite(t, f, p, off)
		copy(want[off:], p)
	}
	if err := f.Zero(2<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	clear(want[2<<20 : 3<<20])
	if got := mustRead(t, f, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("scratch layer reads differently at %d before Close", firstDifference(got, want))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + "-wal"); err == nil {
		t.Error("a WAL file is left after Close")
	}
	g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := mustRead(t, g, 0, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("scratch layer reads differently at %d after Close", firstDifference(got, want))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b[18] != 2 || b[19] != 2 {
		t.Errorf("file format bytes %d, %d after Close: want 2, 2 (WAL)", b[18], b[19])
	}
}
