package sqlitelayer_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// TestHostDiskFull: a layer on a filesystem that fills up. A commit that
// fails for lack of space returns ErrNoSpace (wrapping ENOSPC); data
// flushed before keeps being read; the sectors whose writes were lost
// read as ErrWriteLost, never as their older content, and map as Data;
// writes are refused until a Flush has reported the loss, then accepted
// again; once space is freed they are flushed; reopened, the layer holds
// everything that was flushed and passes Check.
func TestHostDiskFull(t *testing.T) {
	for _, wb := range []bool{false, true} {
		name := "direct"
		if wb {
			name = "writeback"
		}
		t.Run(name, func(t *testing.T) { testHostDiskFull(t, wb) })
	}
}

func testHostDiskFull(t *testing.T, writeBack bool) {
	dir := testenv.SmallFilesystem(t, "16m")
	path := filepath.Join(dir, "disk.db")
	// Checked after the filesystem is unmounted otherwise: the cleanup
	// below runs first.
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if writeBack {
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if f, err = sqlitelayer.Open(path, sqlitelayer.OpenOptions{WriteBack: true}); err != nil {
			t.Fatal(err)
		}
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			f.Close()
		}
	})
	fill := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	write := func(p []byte, off int64) {
		t.Helper()
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	expect := func(off int64, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read at %d: %v, equal %v; want the data", off, err, bytes.Equal(got, want))
		}
	}
	expectLost := func(off int64, n int) {
		t.Helper()
		if _, err := f.ReadAt(make([]byte, n), off); !errors.Is(err, disklayer.ErrWriteLost) {
			t.Fatalf("read of a lost write at %d: %v; want ErrWriteLost", off, err)
		}
	}
	expectNoSpace := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, disklayer.ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("%s on a full filesystem: %v; want ErrNoSpace wrapping ENOSPC", what, err)
		}
	}

	const mib = 1 << 20
	write(fill(0xa1, mib), 0)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	filler := testenv.FillFilesystem(t, dir)

	// The batch overlaps the flushed data from 512K; its commit fails.
	write(fill(0xb2, mib), 512<<10)
	expect(512<<10, fill(0xb2, mib)) // not flushed yet: read from the batch
	expectNoSpace("flush", f.Flush())
	expect(0, fill(0xa1, 512<<10))
	expectLost(512<<10, 4096)
	expectLost(mib+512<<10-4096, 4096)
	expect(mib+512<<10, make([]byte, 4096)) // never written
	for e, err := range f.Extents(0, 2*mib) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind != disklayer.Data && e.Off < mib+512<<10 {
			t.Fatalf("the lost sectors map as %v at %d+%d, want Data", e.Kind, e.Off, e.Len)
		}
	}
	// A partial write of a lost sector cannot merge with what the
	// sector held: it fails like the read.
	if _, err := f.WriteAt([]byte("x"), 600<<10); !errors.Is(err, disklayer.ErrWriteLost) {
		t.Fatalf("partial write of a lost sector: %v; want ErrWriteLost", err)
	}

	// The loss was reported: writes are accepted again, and their
	// commit fails again while the filesystem is full.
	write(fill(0xc3, 4096), 8*mib)
	expectNoSpace("second flush", f.Flush())
	expectLost(8*mib, 4096)

	// A loss found by an early commit (the batch reached its bound)
	// before any flush: later writes are refused until a flush reports
	// it.
	big := fill(0xd4, mib)
	var werr error
	for i := range 24 {
		if _, werr = f.WriteAt(big, int64(16+i)*mib); werr != nil {
			break
		}
	}
	if !writeBack {
		expectNoSpace("write that committed its batch early", werr)
		_, err := f.WriteAt(fill(0xe5, 4096), 0)
		expectNoSpace("write before the loss was reported", err)
		expect(0, fill(0xa1, 4096))
	}
	expectNoSpace("flush after the early commit failed", f.Flush())
	expectLost(16*mib, 4096)

	// Space again: a whole-sector write replaces a lost write, the rest
	// stay lost, and flushes work.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	write(fill(0xf6, 4096), 512<<10)
	if err := f.Flush(); err != nil {
		t.Fatalf("flush once space is freed: %v", err)
	}
	expect(512<<10, fill(0xf6, 4096))
	expectLost(516<<10, 4096)
	closed = true
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	// Reopened: everything flushed is there; the lost sectors hold what
	// was flushed before (the lost set is not kept across opens).
	r, err := sqlitelayer.Check(path)
	if err != nil || !r.OK() {
		t.Fatalf("check: %v %v", err, r)
	}
	f, err = sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	closed = false
	expect(0, fill(0xa1, 512<<10))
	expect(512<<10, fill(0xf6, 4096))
	expect(516<<10, fill(0xa1, 508<<10))
	expect(mib, make([]byte, 4096))
	expect(8*mib, make([]byte, 4096))
}
