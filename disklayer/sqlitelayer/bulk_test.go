package sqlitelayer_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/testbytes"
)

// TestBulk: a layer written by Bulk (its B-tree pages laid out by
// hibdisk, not SQLite) passes SQLite's integrity_check and hibdisk's
// Check, reads back what was written (zeros elsewhere), holds the same
// rows as one written through SQLite, and takes writes afterwards
// (SQLite then splits and rebalances the pages Bulk made). Cases cover a
// tree of no rows, one leaf, two levels, and, with 512-byte pages, three
// levels and overflow chains of several pages; writes come in whole
// sectors, runs, and pieces of a sector.
func TestBulk(t *testing.T) {
	cases := []struct {
		name       string
		pageSize   int
		sectorSize int
		size       int64
		rows       int // about how many sectors hold data
		how        sqlitelayer.BulkOptions
	}{
		{"empty", 0, 4096, 1 << 20, 0, sqlitelayer.BulkOptions{}},
		{"one-leaf", 0, 4096, 1 << 20, 5, sqlitelayer.BulkOptions{}},
		{"two-levels", 0, 4096, 64 << 20, 9000, sqlitelayer.BulkOptions{}},
		{"two-levels-direct", 0, 4096, 64 << 20, 9000, sqlitelayer.BulkOptions{Direct: true}},
		{"two-levels-unsafe", 0, 4096, 64 << 20, 9000, sqlitelayer.BulkOptions{Unsynced: true}},
		{"sector-512", 0, 512, 8 << 20, 9000, sqlitelayer.BulkOptions{}},
		{"pages-512-three-levels", 512, 512, 32 << 20, 40000, sqlitelayer.BulkOptions{}},
		{"pages-512-chains", 512, 4096, 16 << 20, 3000, sqlitelayer.BulkOptions{Unsynced: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.pageSize != 0 {
				defer sqlitelayer.SetPageSizeForTest(c.pageSize)()
			}
			seed := rand.Uint64()
			rng := rand.New(rand.NewPCG(seed, 2))
			want := make([]byte, c.size)
			path := newLayerPath(t, "bulk.hibdisk")
			b, err := sqlitelayer.CreateBulk(path, sqlitelayer.CreateOptions{Size: c.size, SectorSize: c.sectorSize, Label: "bulk"}, c.how)
			if err != nil {
				t.Fatal(err)
			}
			ss := int64(c.sectorSize)
			sectors := c.size / ss
			// Runs of data at random places, in order: about c.rows
			// sectors in all.
			off := int64(0)
			for written := 0; written < c.rows; {
				off += int64(rng.IntN(int(2*sectors/int64(c.rows+1))+1)) * ss
				n := int64(1 + rng.IntN(16))
				if off+n*ss > c.size {
					break
				}
				p := want[off : off+n*ss]
				testbytes.RandomNonZero(rng, p)
				switch rng.IntN(3) {
				case 0: // whole
					mustBulkWrite(t, b, p, off)
				case 1: // sector by sector
					for i := int64(0); i < n; i++ {
						mustBulkWrite(t, b, p[i*ss:(i+1)*ss], off+i*ss)
					}
				case 2: // in pieces that cut sectors
					cut := 1 + rng.IntN(int(ss)-1)
					mustBulkWrite(t, b, p[:cut], off)
					mustBulkWrite(t, b, p[cut:], off+int64(cut))
				}
				off += n * ss
				written += int(n)
			}
			if err := b.Close(); err != nil {
				t.Fatalf("seed %d: %v", seed, err)
			}
			integrityCheck(t, path)
			if r, err := sqlitelayer.Check(path); err != nil || !r.OK() {
				t.Fatalf("Check: %v\n%v", err, r)
			}
			f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// One buffer for both whole reads (see harness.scratch in
			// layertest: fresh large buffers are slow under -race).
			got := make([]byte, c.size)
			readAll := func() []byte {
				clear(got)
				if _, err := f.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				return got
			}
			if got := readAll(); !bytes.Equal(got, want) {
				t.Fatalf("seed %d: the layer does not read back what was written", seed)
			}
			// SQLite can change the tree Bulk made.
			for i := range 200 {
				s := rng.Int64N(sectors)
				p := fill(c.sectorSize, byte(i))
				mustWrite(t, f, p, s*ss)
				copy(want[s*ss:], p)
			}
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := readAll(); !bytes.Equal(got, want) {
				t.Fatalf("seed %d: after writes through SQLite the layer does not read back", seed)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			integrityCheck(t, path)
		})
	}
}

// TestBulkPastOneGiB: a layer of more than 1 GiB of pages leaves the
// page at 1 GiB unused, as SQLite does (its file locks live there), so
// integrity_check passes and the sectors around it read back.
func TestBulkPastOneGiB(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 1.2 GiB layer; skipped in -short mode")
	}
	const size = 1200 << 20
	path := newLayerPath(t, "bulk-big.hibdisk")
	b, err := sqlitelayer.CreateBulk(path, sqlitelayer.CreateOptions{Size: size}, sqlitelayer.BulkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	// Sector s holds x ^ byte(i) | 1 at byte i, x = byte(s) ^ byte(s>>8):
	// the 256 sectors there can be, made once (byte loops over 1.2 GiB
	// were most of the test's time under the race detector).
	var patterns [256][4096]byte
	for x := range patterns {
		for i := range patterns[x] {
			patterns[x][i] = byte(x) ^ byte(i) | 1
		}
	}
	sector := func(p []byte, s int64) { copy(p, patterns[byte(s)^byte(s>>8)][:]) }
	for off := int64(0); off < size; off += int64(len(chunk)) {
		for i := 0; i < len(chunk); i += 4096 {
			sector(chunk[i:i+4096], (off+int64(i))/4096)
		}
		mustBulkWrite(t, b, chunk, off)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	integrityCheck(t, path)
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want, got := make([]byte, 4096), make([]byte, 4096)
	// Rows take 9 pages per 8 sectors, so the page at 1 GiB holds about
	// sector 233,000: read every sector from 200,000 to 260,000 and the ends.
	for s := int64(0); s < size/4096; s++ {
		if s >= 16 && s < 200000 || s >= 260000 && s < size/4096-16 {
			continue
		}
		sector(want, s)
		clear(got)
		if _, err := f.ReadAt(got, s*4096); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("sector %d does not read back: %v", s, err)
		}
	}
}

// TestBulkRefusesDisorder: a write before one already made is refused,
// and so is Close after it: the layer is not finished.
func TestBulkRefusesDisorder(t *testing.T) {
	// Not newLayerPath, which checks the layer at the end: this one is
	// left unfinished, for the caller to delete.
	b, err := sqlitelayer.CreateBulk(filepath.Join(t.TempDir(), "bulk.hibdisk"), sqlitelayer.CreateOptions{Size: 1 << 20}, sqlitelayer.BulkOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustBulkWrite(t, b, fill(8192, 1), 8192)
	if _, err := b.WriteAt(fill(4096, 2), 4096); err == nil {
		t.Fatal("a write before the last one was accepted")
	}
	if err := b.Close(); err == nil {
		t.Fatal("Close after a refused write succeeded")
	}
}

func mustBulkWrite(t *testing.T, b *sqlitelayer.Bulk, p []byte, off int64) {
	t.Helper()
	if n, err := b.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("bulk write of %d bytes at %d: %d, %v", len(p), off, n, err)
	}
}

// integrityCheck runs SQLite's PRAGMA integrity_check on the file.
func integrityCheck(t *testing.T, path string) {
	t.Helper()
	conn, err := sqlite3.Open("file:" + path + "?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, _, err := conn.Prepare("PRAGMA integrity_check")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var out []string
	for st.Step() {
		out = append(out, st.ColumnText(0))
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0] != "ok" {
		t.Fatalf("integrity_check: %s", fmt.Sprint(out))
	}
}
