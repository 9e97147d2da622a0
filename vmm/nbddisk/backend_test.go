package nbddisk_test

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
	"github.com/hibdisk/hibdisk/vmm/nbddisk"
)

type run struct {
	off, length int64
	state       uint32
}

// newStack is a two-layer chain: base data at [0, 16K), a tombstone in
// the top at [4K, 8K), top data at [64K, 68K); 1 MiB in all.
func newStack(t *testing.T) *diffdisk.Disk {
	t.Helper()
	base, err := memlayer.New(1<<20, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := base.WriteAt(bytes.Repeat([]byte{1}, 16<<10), 0); err != nil {
		t.Fatal(err)
	}
	top, err := memlayer.New(1<<20, 4096, true)
	if err != nil {
		t.Fatal(err)
	}
	d, err := diffdisk.New(top, base)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Zero(4096, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte{2}, 4096), 64<<10); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBlockStatus(t *testing.T) {
	b := nbddisk.New(newStack(t))
	var got []run
	if err := b.BlockStatus(0, 1<<20, func(off, length int64, state uint32) bool {
		got = append(got, run{off, length, state})
		return true
	}); err != nil {
		t.Fatal(err)
	}
	hole := nbd.StateHole | nbd.StateZero
	want := []run{{0, 4096, 0}, {4096, 4096, hole}, {8192, 8192, 0}, {16384, 48 << 10, hole}, {64 << 10, 4096, 0}, {68 << 10, 1<<20 - 68<<10, hole}}
	if !slices.Equal(got, want) {
		t.Fatalf("block status:\n got %v\nwant %v", got, want)
	}
	// Stopping early is honoured.
	calls := 0
	if err := b.BlockStatus(0, 1<<20, func(int64, int64, uint32) bool { calls++; return false }); err != nil || calls != 1 {
		t.Fatalf("stop after the first run: %d calls, %v", calls, err)
	}
}

func TestReadSparse(t *testing.T) {
	b := nbddisk.New(newStack(t))
	p := make([]byte, 128<<10)
	var zeros []run
	if err := b.ReadSparse(p, 0, func(off, length int64) { zeros = append(zeros, run{off, length, 0}) }); err != nil {
		t.Fatal(err)
	}
	want := []run{{4096, 4096, 0}, {16 << 10, 48 << 10, 0}, {68 << 10, 60 << 10, 0}}
	if !slices.Equal(zeros, want) {
		t.Fatalf("zero runs:\n got %v\nwant %v", zeros, want)
	}
	// The bytes are all there, zero runs included.
	wantBytes := make([]byte, 128<<10)
	copy(wantBytes, bytes.Repeat([]byte{1}, 16<<10))
	copy(wantBytes[4096:8192], make([]byte, 4096))
	copy(wantBytes[64<<10:], bytes.Repeat([]byte{2}, 4096))
	if !bytes.Equal(p, wantBytes) {
		t.Fatal("ReadSparse bytes differ from the chain's view")
	}
	// An unaligned read reports only whole aligned units inside it.
	zeros = nil
	if err := b.ReadSparse(p[:20000], 70000, func(off, length int64) { zeros = append(zeros, run{off, length, 0}) }); err != nil {
		t.Fatal(err)
	}
	for _, z := range zeros {
		if z.off%4096 != 0 || z.length%4096 != 0 || z.off < 70000 || z.off+z.length > 90000 {
			t.Fatalf("zero run %v is not aligned inside [70000, 90000)", z)
		}
	}
	if len(zeros) != 1 || zeros[0] != (run{73728, 12288, 0}) {
		t.Fatalf("unaligned read zero runs: %v", zeros)
	}
}

func TestErrorsMapToNBD(t *testing.T) {
	d := newStack(t)
	ro, err := diffdisk.Compose(diffdisk.Options{ReadOnly: true}, d.Layer(0), d.Layer(1))
	if err != nil {
		t.Fatal(err)
	}
	b := nbddisk.New(ro)
	if _, err := b.WriteAt([]byte{1}, 0); !errors.Is(err, nbd.EPERM) {
		t.Errorf("write on a read-only chain: %v, want EPERM", err)
	}
	if err := b.Zero(0, 4096); !errors.Is(err, nbd.EPERM) {
		t.Errorf("zero on a read-only chain: %v, want EPERM", err)
	}
	rw := nbddisk.New(d)
	if _, err := rw.ReadAt(make([]byte, 10), 1<<20-5); !errors.Is(err, nbd.EINVAL) || !errors.Is(err, disklayer.ErrOutOfRange) {
		t.Errorf("read past the end: %v, want EINVAL wrapping ErrOutOfRange", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := rw.ReadAt(make([]byte, 10), 0); !errors.Is(err, nbd.ESHUTDOWN) {
		t.Errorf("read after close: %v, want ESHUTDOWN", err)
	}
}
