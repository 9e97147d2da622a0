package rawlayer_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
)

// requirePunchHole skips when the filesystem of dir cannot punch holes,
// where Zero falls back to writing zeros and there are no holes to see.
func requirePunchHole(t *testing.T, dir string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		t.Skipf("the filesystem of %s cannot punch holes: %v", dir, err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Zero punches holes over whole sectors, and Extents reports them Absent.
func TestZeroPunchesHoles(t *testing.T) {
	dir := t.TempDir()
	requirePunchHole(t, dir)
	path := filepath.Join(dir, "disk.img")
	const size = 4 << 20
	l, err := rawlayer.Create(path, size)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := extents(t, l, 0, size); !slices.Equal(got, []disklayer.Extent{{Off: 0, Len: size, Kind: disklayer.Absent}}) {
		t.Fatalf("Extents of a new sparse image = %v, want one Absent extent", got)
	}
	if _, err := l.WriteAt(pattern(size), 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	before := allocated(t, path)
	// An unaligned range: the ends are written as zeros, the middle
	// punched.
	const zeroOff, zeroLen = 1<<20 + 100, 2 << 20
	if err := l.Zero(zeroOff, zeroLen); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := l.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := pattern(size)
	clear(want[zeroOff : zeroOff+zeroLen])
	if !bytes.Equal(got, want) {
		t.Fatalf("content after Zero differs")
	}
	if after := allocated(t, path); after >= before-1<<20 {
		t.Errorf("Zero of 2 MiB freed %d bytes, want at least 1 MiB (allocated %d -> %d)", before-after, before, after)
	}
	// The filesystem's block size bounds what can be punched; at least
	// the middle MiB must be a hole.
	var absent int64
	for _, e := range extents(t, l, 0, size) {
		if e.Kind == disklayer.Absent {
			absent += e.Len
			if e.Off < zeroOff || e.End() > zeroOff+zeroLen {
				t.Errorf("Absent extent %v outside the zeroed range", e)
			}
		}
	}
	if absent < 1<<20 {
		t.Errorf("Extents report %d Absent bytes after zeroing 2 MiB", absent)
	}
}

// allocated returns the bytes the file occupies on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Sys().(*syscall.Stat_t).Blocks * 512
}
