package disklayer_test

import (
	"bytes"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
)

// TestWriteAfterAnotherConnectionCommitted: a layer that has read (and so
// holds a read transaction) must still accept writes after another
// connection — another process in real life — committed to the same
// file. Upgrading the stale read snapshot would fail with
// SQLITE_BUSY_SNAPSHOT; the engine starts a fresh write transaction.
func TestWriteAfterAnotherConnectionCommitted(t *testing.T) {
	path := newLayerPath(t, "shared.db")
	served := createLayer(t, path, disklayer.CreateOptions{Size: 64 << 10})
	mustRead(t, served, 0, 4096) // opens the read transaction

	other, err := disklayer.Open(path, disklayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, other, fill(4096, 0x21), 8192)
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}

	mustWrite(t, served, fill(4096, 0x42), 0)
	if err := served.Flush(); err != nil {
		t.Fatalf("flush after another connection committed: %v", err)
	}
	if got := mustRead(t, served, 0, 4096); !bytes.Equal(got, fill(4096, 0x42)) {
		t.Fatal("own write does not read back")
	}
	// The fresh transaction also sees what the other connection wrote.
	if got := mustRead(t, served, 8192, 4096); !bytes.Equal(got, fill(4096, 0x21)) {
		t.Fatal("the other connection's committed write is not visible after the write transaction began")
	}
}
