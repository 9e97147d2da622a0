package sqlitelayer_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/layertest"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

var conformanceFiles atomic.Int64

func sqliteFactory() layertest.Factory { return sqliteFactoryWith(sqlitelayer.OpenOptions{}) }

// sqliteWriteBackFactory serves layers opened with write-back: the same
// contract must hold.
func sqliteWriteBackFactory() layertest.Factory {
	return sqliteFactoryWith(sqlitelayer.OpenOptions{WriteBack: true})
}

func sqliteFactoryWith(open sqlitelayer.OpenOptions) layertest.Factory {
	return layertest.Factory{
		New: func(t *testing.T, size int64, sectorSize int, hasParent bool) disklayer.Disk {
			dir := t.TempDir()
			path := checkedLayer(t, filepath.Join(dir, fmt.Sprintf("layer%d.hibdisk", conformanceFiles.Add(1))))
			opts := sqlitelayer.CreateOptions{Size: size, SectorSize: sectorSize}
			if hasParent {
				opts.Parent = rawParent(t, dir, size)
			}
			f, err := sqlitelayer.Create(path, opts)
			if err != nil {
				t.Fatal(err)
			}
			if open == (sqlitelayer.OpenOptions{}) {
				return f
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if f, err = sqlitelayer.Open(path, open); err != nil {
				t.Fatal(err)
			}
			return f
		},
		Reopen: func(t *testing.T, d disklayer.Disk) disklayer.Disk {
			f := d.(*sqlitelayer.File)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			g, err := sqlitelayer.Open(f.Path(), open)
			if err != nil {
				t.Fatal(err)
			}
			return g
		},
		SectorSizes:  []int{512, 4096, 65536},
		WithParent:   true,
		ExtentsExact: true,
	}
}

func TestSQLiteConformance(t *testing.T) { layertest.Run(t, sqliteFactory()) }

func FuzzSQLiteOps(f *testing.F) { layertest.FuzzOps(f, sqliteFactory()) }

func TestSQLiteWriteBackConformance(t *testing.T) { layertest.Run(t, sqliteWriteBackFactory()) }

func FuzzSQLiteWriteBackOps(f *testing.F) { layertest.FuzzOps(f, sqliteWriteBackFactory()) }
