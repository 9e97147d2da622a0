package sqlitelayer_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/lock"
	"github.com/hibdisk/hibdisk/internal/store"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

// TestWriteAfterAnotherConnectionCommitted: a layer that has read (and so
// holds a read transaction) must still accept writes after another
// connection — another process in real life, such as the sqlite3 shell — committed to the same
// file. Upgrading the stale read snapshot would fail with
// SQLITE_BUSY_SNAPSHOT; the engine starts a fresh write transaction.
func TestWriteAfterAnotherConnectionCommitted(t *testing.T) {
	path := newLayerPath(t, "shared.db")
	served := createLayer(t, path, sqlitelayer.CreateOptions{Size: 64 << 10})
	mustRead(t, served, 0, 4096) // opens the read transaction

	// Another hibdisk writer is refused by the layer lock, so the other
	// connection is the sqlite3 shell's kind.
	if _, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{}); !errors.Is(err, lock.ErrInUse) {
		t.Fatalf("second writable open: %v, want lock.ErrInUse", err)
	}
	uri, err := store.FileURI(path, "rw") // the layer's own VFS, so WAL and mappings are shared
	if err != nil {
		t.Fatal(err)
	}
	storetest.Exec(t, uri, "INSERT INTO sectors (sector, data) VALUES (2, unhex(replace(hex(zeroblob(4096)), '00', '21')))")

	mustWrite(t, served, fill(4096, 0x42), 0)
	if err := served.Flush(); err != nil {
		t.Fatalf("flush after another connection committed: %v", err)
	}
	if got := mustRead(t, served, 0, 4096); !bytes.Equal(got, fill(4096, 0x42)) {
		t.Fatal("own write does not read back")
	}
	// What the other connection wrote is committed, but the writer's own
	// view need not show it: a layer held for writing is not to be
	// written behind its back (the layer lock refuses hibdisk writers;
	// the sqlite3 shell does not take it).
	if rows := rowKinds(t, path, "sectors"); rows[2] != "data" {
		t.Fatalf("the other connection's row is gone: %v", rows)
	}
}
