package sqlitelayer_test

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/lock"
)

// sealedLayer makes a layer with data written (some of it still in the
// WAL when Seal runs) and seals it.
func sealedLayer(t *testing.T) (path string, s sqlitelayer.Sealed, data []byte) {
	t.Helper()
	path = newLayerPath(t, "base.db")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data = fill(256<<10, 7)
	mustWrite(t, f, data, 64<<10)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = sqlitelayer.Seal(path, sqlitelayer.SealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return path, s, data
}

// TestSeal: a sealed layer is out of WAL mode, marked read-only, has no
// WAL beside it, keeps its uuid, generation and content, and its digest
// is the SHA-256 of its file.
func TestSeal(t *testing.T) {
	path := newLayerPath(t, "base.db")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 4 << 20, Label: "golden"})
	if err != nil {
		t.Fatal(err)
	}
	data := fill(256<<10, 7)
	mustWrite(t, f, data, 64<<10)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	before := f.Info()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := sqlitelayer.Seal(path, sqlitelayer.SealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, size, err := sqlitelayer.FileDigest(path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Digest != want || s.Size != size || s.Already {
		t.Errorf("Seal = %+v, the file has %s, %d bytes", s, want, size)
	}
	if _, err := os.Stat(path + "-wal"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a WAL is left beside the sealed layer: %v", err)
	}
	header := make([]byte, 20)
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	fh.ReadAt(header, 0)
	fh.Close()
	if header[18] != 1 || header[19] != 1 {
		t.Errorf("header bytes 18-19 are %d %d, want 1 1 (not WAL)", header[18], header[19])
	}
	g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	after := g.Info()
	if !after.Sealed || !after.ReadOnly || after.UUID != before.UUID || after.Generation != before.Generation || after.Label != "golden" {
		t.Errorf("after seal: %+v; before: %+v", after, before)
	}
	if got := mustRead(t, g, 64<<10, len(data)); !bytes.Equal(got, data) {
		t.Error("the sealed layer reads other data")
	}
	if _, err := g.WriteAt(data[:4096], 0); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("write to a sealed layer: %v, want ErrReadOnly", err)
	}
}

// TestSealIdempotent: sealing again rewrites nothing and gives the same
// digest.
func TestSealIdempotent(t *testing.T) {
	path, first, _ := sealedLayer(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := sqlitelayer.Seal(path, sqlitelayer.SealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != first.Digest || !again.Already {
		t.Errorf("second seal = %+v, first %+v", again, first)
	}
	st2, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(st, st2) || !st.ModTime().Equal(st2.ModTime()) {
		t.Error("the second seal rewrote the file")
	}
}

// TestSealedRefusesWritableOpen: no writable open, which would put the
// file back in WAL mode and change its bytes; the error says what to do.
func TestSealedRefusesWritableOpen(t *testing.T) {
	path, s, _ := sealedLayer(t)
	_, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if !errors.Is(err, disklayer.ErrReadOnly) || !strings.Contains(err.Error(), "is sealed") || !strings.Contains(err.Error(), "hibdisk create -b") {
		t.Fatalf("writable open of a sealed layer: %v", err)
	}
	d, _, err := sqlitelayer.FileDigest(path)
	if err != nil {
		t.Fatal(err)
	}
	if d != s.Digest {
		t.Errorf("the refused open changed the file: digest %s, sealed as %s", d, s.Digest)
	}
}

// TestSealRefusesLayerInUse: a layer someone holds writable is refused,
// naming the holder, and left as it was.
func TestSealRefusesLayerInUse(t *testing.T) {
	path := newLayerPath(t, "busy.db")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20})
	mustWrite(t, f, fill(4096, 3), 0)
	_, err := sqlitelayer.Seal(path, sqlitelayer.SealOptions{})
	if !errors.Is(err, lock.ErrInUse) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("seal of a layer in use: %v, want ErrInUse naming the holder", err)
	}
	if f.Info().Sealed || f.Info().ReadOnly {
		t.Error("the refused seal marked the layer")
	}
}

// TestSealRecordsParentDigest: the child records the digest it is given
// without a generation bump; sealing it again over another digest is
// refused.
func TestSealRecordsParentDigest(t *testing.T) {
	base, s, _ := sealedLayer(t)
	g, err := sqlitelayer.Open(base, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	bi := g.Info()
	g.Close()
	child := checkedLayer(t, base+".child.db")
	ref := &disklayer.ParentRef{Path: "base.db", Format: disklayer.FormatHibdisk, UUID: bi.UUID, Size: bi.DiskSize, Generation: bi.Generation}
	f, err := sqlitelayer.Create(child, sqlitelayer.CreateOptions{Size: 4 << 20, Parent: ref})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, fill(8192, 9), 0)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	gen := f.Info().Generation
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// A shared reader (info, map) holds the child open meanwhile: the
	// digest is recorded in the sealed copy, so nothing is written into
	// the old file's WAL, which could be left beside the sealed one.
	reader, err := sqlitelayer.Open(child, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	mustRead(t, reader, 0, 8192)
	cs, err := sqlitelayer.Seal(child, sqlitelayer.SealOptions{ParentSHA256: s.Digest})
	if err != nil {
		t.Fatal(err)
	}
	if err := reader.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(child + "-wal"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a WAL is left beside the sealed child: %v", err)
	}
	if d, _, err := sqlitelayer.FileDigest(child); err != nil || d != cs.Digest {
		t.Errorf("child's digest after its reader closed: %s, %v; sealed as %s", d, err, cs.Digest)
	}
	c, err := sqlitelayer.Open(child, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	info := c.Info()
	c.Close()
	if info.Parent.SHA256 != s.Digest || info.Generation != gen {
		t.Errorf("child after seal: parent %+v, generation %d (was %d)", info.Parent, info.Generation, gen)
	}
	other := "sha256:" + strings.Repeat("0", 64)
	if _, err := sqlitelayer.Seal(child, sqlitelayer.SealOptions{ParentSHA256: other}); !errors.Is(err, disklayer.ErrParentMismatch) {
		t.Errorf("reseal over another parent digest: %v, want ErrParentMismatch", err)
	}
	if again, err := sqlitelayer.Seal(child, sqlitelayer.SealOptions{ParentSHA256: s.Digest}); err != nil || again.Digest != cs.Digest {
		t.Errorf("reseal over the same digest: %+v, %v", again, err)
	}
}

// TestSealWithSharedReader: a shared reader (info, map) does not stop a
// seal; it keeps reading the old file, and the sealed file opens and
// reads while that reader is still open and after it closes.
func TestSealWithSharedReader(t *testing.T) {
	path := newLayerPath(t, "base.db")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	data := fill(64<<10, 5)
	mustWrite(t, f, data, 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	reader, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustRead(t, reader, 0, len(data)); !bytes.Equal(got, data) {
		t.Fatal("reader reads other data")
	}
	s, err := sqlitelayer.Seal(path, sqlitelayer.SealOptions{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true, HoldStable: true})
		if err != nil {
			t.Fatalf("open of the sealed layer %s: %v", when, err)
		}
		defer g.Close()
		if !g.Info().Sealed {
			t.Errorf("%s: not sealed", when)
		}
		if got := mustRead(t, g, 0, len(data)); !bytes.Equal(got, data) {
			t.Errorf("%s: the sealed layer reads other data", when)
		}
	}
	check("while the old reader is open")
	if got := mustRead(t, reader, 0, len(data)); !bytes.Equal(got, data) {
		t.Error("the old reader reads other data after the seal")
	}
	if err := reader.Close(); err != nil {
		t.Fatal(err)
	}
	check("after the old reader closed")
	if d, _, err := sqlitelayer.FileDigest(path); err != nil || d != s.Digest {
		t.Errorf("digest after all: %s, %v; sealed as %s", d, err, s.Digest)
	}
	if _, err := os.Stat(path + "-wal"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a WAL is left beside the sealed layer: %v", err)
	}
}
