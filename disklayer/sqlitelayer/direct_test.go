package sqlitelayer_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/testbytes"
)

// TestDirectReadsMatchSQLite: the B-tree reader of direct.go returns what
// SQLite returns, byte for byte and gap for gap, for random ranges of
// layers holding data, tombstones and holes, with rows in the leaf
// (512-byte sectors), with one overflow page (4096), with chains of
// overflow pages and trees of several levels (512-byte pages).
func TestDirectReadsMatchSQLite(t *testing.T) {
	for _, c := range []struct{ sector, page, blocks int }{
		{4096, 0, 3000}, {512, 0, 20000}, {4096, 512, 1500}, {512, 512, 4000},
	} {
		t.Run(fmt.Sprintf("sector%d-page%d", c.sector, c.page), func(t *testing.T) {
			restore := sqlitelayer.SetPageSizeForTest(c.page)
			defer restore()
			dir := t.TempDir()
			size := int64(c.blocks) * int64(c.sector)
			path := checkedLayer(t, filepath.Join(dir, "l.db"))
			f := createLayer(t, path, sqlitelayer.CreateOptions{Size: size, SectorSize: c.sector, Parent: rawParent(t, dir, size)})
			rng := rand.New(rand.NewPCG(uint64(c.sector), uint64(c.page)))
			block := make([]byte, c.sector)
			for i := 0; i < c.blocks; i++ {
				switch rng.IntN(5) {
				case 0, 1, 2: // data
					testbytes.Random(rng, block)
					mustWrite(t, f, block, int64(i)*int64(c.sector))
				case 3: // a tombstone
					if err := f.Zero(int64(i)*int64(c.sector), int64(c.sector)); err != nil {
						t.Fatal(err)
					}
				}
			}
			on, err := sqlitelayer.SettleForTest(f)
			if err != nil || !on {
				t.Fatalf("after a flush and a checkpoint direct reads are on: %v, %v", on, err)
			}
			// The read buffers are reused, poisoned for every check: a
			// fresh large buffer per check cost more under the race
			// detector (page faults in its shadow memory) than the reads.
			pbuf, qbuf := make([]byte, size), make([]byte, size)
			check := func(off int64, n int) {
				p, q := pbuf[:n], qbuf[:n]
				testbytes.Fill(p, 0xee)
				testbytes.Fill(q, 0xdd)
				ok, gd, gs, err := sqlitelayer.ReadWaysForTest(f, p, q, off)
				if err != nil || !ok {
					t.Fatalf("read %d+%d: direct %v, %v", off, n, ok, err)
				}
				if !bytes.Equal(p, q) || !slices.Equal(gd, gs) {
					t.Fatalf("read %d+%d: direct and SQLite differ (bytes equal %v; gaps %v vs %v)", off, n, bytes.Equal(p, q), gd, gs)
				}
			}
			check(0, int(size))
			for range 2000 {
				off := rng.Int64N(size)
				n := 1 + rng.IntN(min(int(size-off), 256<<10))
				check(off, n)
			}
			// The layer's own reads (ReadAt, ReadOwn) take the direct path
			// and agree with the data.
			got := mustRead(t, f, 0, int(size))
			want := make([]byte, size)
			if _, _, _, err := sqlitelayer.ReadWaysForTest(f, make([]byte, size), want, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("ReadAt differs from SQLite's content")
			}
		})
	}
}

// TestDirectReadsSeeAcknowledgedWrites: every write that returned is
// seen by every read that starts after it, when writes (write-back on)
// arrive while direct reads are on, with readers of other blocks and
// checkpoints running; and a write turns direct reads off until a
// checkpoint catches up.
func TestDirectReadsSeeAcknowledgedWrites(t *testing.T) {
	const bs, blocks, half = 4096, 2048, 1024
	path := newLayerPath(t, "l.db")
	f := createWriteBack(t, path, sqlitelayer.CreateOptions{Size: blocks * bs})
	defer f.Close()
	mustWrite(t, f, bytes.Repeat([]byte{1}, blocks*bs), 0)
	if on, err := sqlitelayer.SettleForTest(f); err != nil || !on {
		t.Fatalf("direct reads on: %v, %v", on, err)
	}
	mustWrite(t, f, bytes.Repeat([]byte{2}, bs), 0)
	if sqlitelayer.DirectReadsForTest(f) {
		t.Fatal("direct reads stay on after a write")
	}
	mustWrite(t, f, bytes.Repeat([]byte{1}, bs), 0)
	// The first half holds 1s throughout; writers change the second.
	for round := range 20 {
		if on, err := sqlitelayer.SettleForTest(f); err != nil || !on {
			t.Fatalf("round %d: direct reads on after settling: %v, %v", round, on, err)
		}
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(w), uint64(round)))
				buf := make([]byte, bs)
				for i := range 30 {
					blk := int64(half + w*(half/4) + rng.IntN(half/4))
					v := byte((round*31+i)%250 + 3)
					for j := range buf {
						buf[j] = v
					}
					mustWrite(t, f, buf, blk*bs)
					if got := mustRead(t, f, blk*bs, bs); got[0] != v || got[bs-1] != v {
						t.Errorf("round %d block %d: read %d after writing %d", round, blk, got[0], v)
						return
					}
				}
			}()
		}
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if got := mustRead(t, f, 0, half*bs); !bytes.Equal(got, bytes.Repeat([]byte{1}, half*bs)) {
					t.Errorf("round %d: the first half changed", round)
				}
			}()
		}
		wg.Wait()
	}
}

// TestDirectReadsComeOnByThemselves: after writes and a flush, a run of
// large reads with no commit between them asks for the checkpoint that
// turns direct reads on; one read after each flush does not.
func TestDirectReadsComeOnByThemselves(t *testing.T) {
	const bs, blocks = 4096, 1024
	path := newLayerPath(t, "l.db")
	f := createWriteBack(t, path, sqlitelayer.CreateOptions{Size: blocks * bs})
	defer f.Close()
	for i := range 8 {
		mustWrite(t, f, bytes.Repeat([]byte{byte(i + 1)}, 64<<10), int64(i)*(64<<10))
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		mustRead(t, f, 0, 64<<10)
	}
	if sqlitelayer.DirectReadsForTest(f) {
		t.Fatal("direct reads came on while every read followed a flush")
	}
	for i := range 64 {
		mustRead(t, f, int64(i%8)*(64<<10), 64<<10)
	}
	for deadline := time.Now().Add(10 * time.Second); !sqlitelayer.DirectReadsForTest(f); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a run of reads did not bring direct reads on")
		}
		mustRead(t, f, 0, 64<<10)
	}
	if got := mustRead(t, f, 7*(64<<10), 64<<10); got[0] != 8 || got[len(got)-1] != 8 {
		t.Fatalf("direct read of the last write: %d", got[0])
	}
}
