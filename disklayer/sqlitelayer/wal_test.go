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
)

func copyBytes(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// refusesWAL asserts that the layer at path is refused by Open, reported
// by Check and left alone by Repair because of its -wal file, naming why.
func refusesWAL(t *testing.T, path, why string) {
	t.Helper()
	_, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if !errors.Is(err, disklayer.ErrCorrupt) || !strings.Contains(err.Error(), why) {
		t.Errorf("open with that -wal: %v; want ErrCorrupt saying %q", err, why)
	}
	for name, run := range map[string]func(string) (*sqlitelayer.Report, error){"check": sqlitelayer.Check, "repair": sqlitelayer.Repair} {
		r, err := run(path)
		if err != nil || r.OK() || !strings.Contains(r.String(), why) {
			t.Errorf("%s with that -wal: %v, %v; want a problem saying %q", name, r, err, why)
		}
	}
}

// TestForeignWALRefused is finding 12: another layer's -wal copied beside
// a layer was applied silently (its pages mixed into this layer) and check
// was clean; so was an old copy of the layer's own WAL put back beside a
// newer file.
func TestForeignWALRefused(t *testing.T) {
	dir := t.TempDir()
	a, b := checkedLayer(t, filepath.Join(dir, "a.hibdisk")), checkedLayer(t, filepath.Join(dir, "b.hibdisk"))
	fa := createLayer(t, a, sqlitelayer.CreateOptions{Size: 1 << 20})
	mustWrite(t, fa, fill(4096, 1), 0)
	if err := fa.Close(); err != nil {
		t.Fatal(err)
	}
	// b's WAL, with a flushed commit, while b is open.
	fb := createLayer(t, b, sqlitelayer.CreateOptions{Size: 1 << 20})
	mustWrite(t, fb, fill(4096, 2), 0)
	if err := fb.Flush(); err != nil {
		t.Fatal(err)
	}
	copyBytes(t, b+"-wal", a+"-wal")
	if err := fb.Close(); err != nil {
		t.Fatal(err)
	}
	refusesWAL(t, a, "belongs to another layer")
	if err := os.Remove(a + "-wal"); err != nil {
		t.Fatal(err)
	}
	f, err := sqlitelayer.Open(a, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, f, 0, 4096); !bytes.Equal(got, fill(4096, 1)) {
		t.Error("the layer's own data changed")
	}
	// An old WAL of the layer itself, put back after the file moved on.
	mustWrite(t, f, fill(4096, 3), 0)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	copyBytes(t, a+"-wal", filepath.Join(dir, "old-wal"))
	mustWrite(t, f, fill(4096, 4), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	copyBytes(t, filepath.Join(dir, "old-wal"), a+"-wal")
	refusesWAL(t, a, "older than the file")
	if err := os.Remove(a + "-wal"); err != nil {
		t.Fatal(err)
	}
	f, err = sqlitelayer.Open(a, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := mustRead(t, f, 0, 4096); !bytes.Equal(got, fill(4096, 4)) {
		t.Error("the newest flushed data does not read back")
	}
}
