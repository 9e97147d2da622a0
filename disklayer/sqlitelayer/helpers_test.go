package sqlitelayer_test

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// checkedLayer registers path to be checked with sqlitelayer.Check when the
// test ends: every layer file a test touches must end up consistent.
// Register before the t.Cleanup that closes the layer, so the check runs
// after it (cleanups run last-registered first).
func checkedLayer(t testing.TB, path string) string {
	t.Helper()
	t.Cleanup(func() {
		r, err := sqlitelayer.Check(path)
		if err != nil {
			t.Errorf("check %s: %v", path, err)
			return
		}
		if !r.OK() {
			t.Errorf("check %s found problems:\n%s", path, r)
		}
	})
	return path
}

// newLayerPath returns a fresh path in the test's temporary directory,
// registered with checkedLayer.
func newLayerPath(t testing.TB, name string) string {
	t.Helper()
	dir := t.TempDir()
	return checkedLayer(t, filepath.Join(dir, name))
}

// createLayer creates a layer and closes it when the test ends.
func createLayer(t testing.TB, path string, opts sqlitelayer.CreateOptions) *sqlitelayer.File {
	t.Helper()
	f, err := sqlitelayer.Create(path, opts)
	if err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// createWriteBack creates a layer and reopens it with write-back (the
// caller closes it).
func createWriteBack(t testing.TB, path string, opts sqlitelayer.CreateOptions) *sqlitelayer.File {
	t.Helper()
	f, err := sqlitelayer.Create(path, opts)
	if err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if f, err = sqlitelayer.Open(path, sqlitelayer.OpenOptions{WriteBack: true}); err != nil {
		t.Fatalf("open %s with write-back: %v", path, err)
	}
	return f
}

// rawParent makes a sparse raw image of size bytes in dir (so Check finds
// the parent) and returns a reference to it. The layer's own behaviour
// does not depend on the parent's content.
func rawParent(t testing.TB, dir string, size int64) *disklayer.ParentRef {
	t.Helper()
	path := filepath.Join(dir, "parent.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return &disklayer.ParentRef{Path: "parent.img", Format: disklayer.FormatRaw, Size: size, Digest: "not-compared"}
}

// fill returns n bytes of a pattern that differs with seed, none of them
// zero: byte i is seed + byte(i*7) + byte(i>>9), or 1 where that is 0.
// It works eight bytes at a time (byte loops are slow under the race
// detector; see internal/testbytes).
func fill(n int, seed byte) []byte {
	const ones, steps = 0x0101010101010101, 0x312a231c150e0700 // byte k: 7k
	p := make([]byte, (n+7)&^7)
	for i := 0; i < len(p); i += 8 {
		// Bytes i..i+7 share i>>9, since i is a multiple of 8.
		r := addBytes(addBytes(uint64(byte(i*7))*ones, steps), uint64(byte(i>>9)+seed)*ones)
		const lows, highs = 0x7f7f7f7f7f7f7f7f, 0x8080808080808080
		zero := ^(((r & lows) + lows) | r) & highs // the high bit of each zero byte
		binary.LittleEndian.PutUint64(p[i:], r|zero>>7)
	}
	return p[:n]
}

// addBytes adds x and y byte by byte, each byte wrapping on its own.
func addBytes(x, y uint64) uint64 {
	const lows, highs = 0x7f7f7f7f7f7f7f7f, 0x8080808080808080
	return ((x & lows) + (y & lows)) ^ ((x ^ y) & highs)
}

func mustRead(t testing.TB, l disklayer.Layer, off int64, n int) []byte {
	t.Helper()
	p := make([]byte, n)
	if _, err := l.ReadAt(p, off); err != nil {
		t.Fatalf("read %d at %d: %v", n, off, err)
	}
	return p
}

func mustWrite(t testing.TB, d disklayer.Disk, p []byte, off int64) {
	t.Helper()
	if _, err := d.WriteAt(p, off); err != nil {
		t.Fatalf("write %d at %d: %v", len(p), off, err)
	}
}

// rowKinds returns the rows of table (sectors or hibernate_blocks) as
// key → "data" or "null", read directly from the committed file.
func rowKinds(t testing.TB, path, table string) map[int64]string {
	t.Helper()
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT * , data IS NULL FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	rows := map[int64]string{}
	for stmt.Step() {
		if stmt.ColumnBool(2) {
			rows[stmt.ColumnInt64(0)] = "null"
		} else {
			rows[stmt.ColumnInt64(0)] = "data"
		}
	}
	if err := stmt.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}
