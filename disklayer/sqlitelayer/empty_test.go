package sqlitelayer_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

func TestEmpty(t *testing.T) {
	path := newLayerPath(t, "l.db")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 64 << 10, Parent: rawParent(t, filepath.Dir(path), 64<<10)})
	mustWrite(t, f, fill(8192, 3), 4096)
	if err := f.Zero(32<<10, 4096); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f.Hibernate(), fill(4096, 5), 0)

	// EmptyDisk keeps the hibernate file; pending writes are committed
	// first, not lost with the deletes.
	if err := f.EmptyDisk(); err != nil {
		t.Fatal(err)
	}
	if rows := rowKinds(t, path, "sectors"); len(rows) != 0 {
		t.Fatalf("sectors after EmptyDisk: %v", rows)
	}
	if rows := rowKinds(t, path, "hibernate_blocks"); len(rows) != 1 {
		t.Fatalf("hibernate_blocks after EmptyDisk: %v, want the one block", rows)
	}
	if got := mustRead(t, f, 0, 64<<10); !bytes.Equal(got, make([]byte, 64<<10)) {
		t.Fatal("an emptied layer reads data")
	}

	mustWrite(t, f, fill(4096, 7), 0)
	if err := f.Empty(); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"sectors", "hibernate_blocks"} {
		if rows := rowKinds(t, path, table); len(rows) != 0 {
			t.Fatalf("%s after Empty: %v", table, rows)
		}
	}
	// The layer stays usable.
	mustWrite(t, f, fill(4096, 9), 8192)
	if got := mustRead(t, f, 8192, 4096); !bytes.Equal(got, fill(4096, 9)) {
		t.Fatal("write after Empty does not read back")
	}
}

func TestEmptyReadOnly(t *testing.T) {
	path := newLayerPath(t, "l.db")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 8192})
	mustWrite(t, f, fill(4096, 1), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Empty(); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Fatalf("Empty on a read-only layer: %v, want ErrReadOnly", err)
	}
	if rows := rowKinds(t, path, "sectors"); len(rows) != 1 {
		t.Fatalf("a refused Empty changed the rows: %v", rows)
	}
}
