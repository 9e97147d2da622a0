package rawlayer_test

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/layertest"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
)

var factory = layertest.Factory{
	New: func(t *testing.T, size int64, sectorSize int, hasParent bool) disklayer.Disk {
		l, err := rawlayer.Create(filepath.Join(t.TempDir(), "disk.img"), size, rawlayer.WithSectorSize(sectorSize))
		if err != nil {
			t.Fatal(err)
		}
		return l
	},
	Reopen: func(t *testing.T, d disklayer.Disk) disklayer.Disk {
		l := d.(*rawlayer.Layer)
		if err := l.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		reopened, err := rawlayer.Open(l.Path(), false, rawlayer.WithSectorSize(l.SectorSize()))
		if err != nil {
			t.Fatal(err)
		}
		return reopened
	},
	SectorSizes: []int{512, 4096},
	// A raw file cannot tell written zeros from data.
	ExtentsExact: false,
}

func TestConformance(t *testing.T) { layertest.Run(t, factory) }

func FuzzRawlayer(f *testing.F) { layertest.FuzzOps(f, factory) }

func writeFile(t *testing.T, content []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i%251) + 1
	}
	return p
}

func extents(t *testing.T, l disklayer.Layer, off, length int64) []disklayer.Extent {
	t.Helper()
	var list []disklayer.Extent
	for e, err := range l.Extents(off, length) {
		if err != nil {
			t.Fatalf("Extents(%d, %d): %v", off, length, err)
		}
		list = append(list, e)
	}
	return list
}

// A file whose size is not a multiple of the sector size shows all of its
// bytes, then zeros up to the next sector boundary.
func TestOddSizeRoundsUp(t *testing.T) {
	content := pattern(1000)
	path := writeFile(t, content)
	l, err := rawlayer.Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Size() != 1024 {
		t.Fatalf("Size = %d, want 1024", l.Size())
	}
	got := make([]byte, 1024)
	if _, err := l.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if want := append(slices.Clone(content), make([]byte, 24)...); !bytes.Equal(got, want) {
		t.Errorf("content of the rounded disk differs from the file followed by zeros")
	}
	if last := extents(t, l, 0, 1024); len(last) != 1 || last[0].Kind != disklayer.Data {
		t.Errorf("Extents = %v, want one Data extent (the tail rounds with its sector)", last)
	}
	if info, _ := os.Stat(path); info.Size() != 1000 {
		t.Errorf("opening changed the file size to %d", info.Size())
	}
	// Writing the tail extends the file to the visible size.
	if _, err := l.WriteAt([]byte{0xAB}, 1023); err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(path); info.Size() != 1024 {
		t.Errorf("after writing the last byte, the file has %d bytes, want 1024", info.Size())
	}
	if _, err := l.WriteAt([]byte{1}, 1024); !errors.Is(err, disklayer.ErrOutOfRange) {
		t.Errorf("write past the rounded size = %v, want ErrOutOfRange", err)
	}
}

func TestReadOnly(t *testing.T) {
	content := pattern(8192)
	path := writeFile(t, content)
	l, err := rawlayer.Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt([]byte{1}, 0); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("WriteAt = %v, want ErrReadOnly", err)
	}
	if err := l.Zero(0, 4096); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("Zero = %v, want ErrReadOnly", err)
	}
	got := make([]byte, 8192)
	if _, err := l.ReadAt(got, 0); err != nil || !bytes.Equal(got, content) {
		t.Errorf("ReadAt = %v, content equal: %v", err, bytes.Equal(got, content))
	}
	if err := l.Flush(); err != nil {
		t.Errorf("Flush of a read-only image = %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after, content) {
		t.Errorf("a read-only open changed the file")
	}
}

func TestCreateAndOpenErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	l, err := rawlayer.Create(path, 4096)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := rawlayer.Create(path, 4096); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Create over an existing file = %v, want fs.ErrExist", err)
	}
	if _, err := rawlayer.Create(filepath.Join(dir, "b.img"), 1000); !errors.Is(err, disklayer.ErrInvalid) {
		t.Errorf("Create of a partial sector = %v, want ErrInvalid", err)
	}
	if _, err := rawlayer.Create(filepath.Join(dir, "c.img"), 4096, rawlayer.WithSectorSize(1000)); !errors.Is(err, disklayer.ErrInvalid) {
		t.Errorf("Create with sector size 1000 = %v, want ErrInvalid", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "b.img")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a rejected Create left a file behind: %v", err)
	}
	if _, err := rawlayer.Open(filepath.Join(dir, "missing.img"), true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a missing file = %v, want fs.ErrNotExist", err)
	}
	if _, err := rawlayer.Open(dir, true); err == nil {
		t.Errorf("Open of a directory succeeded")
	}
}
