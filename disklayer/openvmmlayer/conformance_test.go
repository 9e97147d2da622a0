package openvmmlayer

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/layertest"
	"github.com/hibdisk/hibdisk/internal/store"
)

var conformanceFiles atomic.Int64

// factory serves writable layers from Create. It has no parent: a file
// Create writes is a base, whose all-zero sectors have no row.
var factory = layertest.Factory{
	New: func(t *testing.T, size int64, sectorSize int, _ bool) disklayer.Disk {
		path := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d.db", conformanceFiles.Add(1)))
		l, err := Create(path, CreateOptions{Size: size, SectorSize: sectorSize})
		if err != nil {
			t.Fatal(err)
		}
		return l
	},
	Reopen: func(t *testing.T, d disklayer.Disk) disklayer.Disk {
		l := d.(*Layer)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return openWritable(t, l.path)
	},
	SectorSizes:  []int{512, 4096},
	ExtentsExact: true,
}

// openWritable opens an existing file for writing again, as Create
// leaves it open (the package has no such open: hibdisk only writes the
// files it creates).
func openWritable(t *testing.T, path string) *Layer {
	t.Helper()
	uri, err := store.FileURI(path, "rw")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := sqlite3.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec("PRAGMA synchronous=FULL"); err != nil {
		t.Fatal(err)
	}
	l, err := newLayer(conn, path, false)
	if err == nil {
		l.writer, err = newWriter(conn)
	}
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestConformance(t *testing.T) { layertest.Run(t, factory) }

func FuzzOpenVMMLayer(f *testing.F) { layertest.FuzzOps(f, factory) }
