package diffdisk_test

import (
	"bytes"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
)

// TestSkipUnchanged: rewriting a lower layer's content stores nothing in
// the top; changed sectors, unaligned ends and rewrites of sectors the
// top already holds are stored as usual.
func TestSkipUnchanged(t *testing.T) {
	const ss = 512
	base, err := memlayer.New(64*ss, ss, false)
	if err != nil {
		t.Fatal(err)
	}
	old := bytes.Repeat([]byte{7}, 16*ss)
	if _, err := base.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	top, err := memlayer.New(64*ss, ss, true)
	if err != nil {
		t.Fatal(err)
	}
	d, err := diffdisk.Compose(diffdisk.Options{}, top, base)
	if err != nil {
		t.Fatal(err)
	}
	w := diffdisk.SkipUnchanged(d)
	if _, err := w.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	if n := stored(t, top); n != 0 {
		t.Fatalf("an unchanged rewrite stored %d bytes in the top", n)
	}
	p := append([]byte(nil), old[:8*ss+100]...)
	p[3*ss] = 1 // sector 3 changes
	if _, err := w.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if n := stored(t, top); n != 2*ss { // sector 3 and the partial sector 8
		t.Errorf("top stores %d bytes, want %d", n, 2*ss)
	}
	if _, err := w.WriteAt(old[:ss], 3*ss); err != nil { // back to the old content
		t.Fatal(err)
	}
	got := make([]byte, 16*ss)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), old...)
	if !bytes.Equal(got, want) {
		t.Errorf("the chain does not read what was written")
	}
}

func stored(t *testing.T, l disklayer.Layer) int64 {
	t.Helper()
	var n int64
	for e, err := range l.Extents(0, l.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == disklayer.Data {
			n += e.Len
		}
	}
	return n
}
