package sqlitelayer_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/remote/chunks"
)

// sealForTest writes to dst what seal makes of the layer at src: a copy
// of src, sealed (sqlitelayer.Seal: VACUUM INTO, journal_mode=DELETE,
// read_only=1).
func sealForTest(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlitelayer.Seal(dst, sqlitelayer.SealOptions{}); err != nil {
		t.Fatalf("seal %s: %v", dst, err)
	}
	if b, err = os.ReadFile(dst); err != nil {
		t.Fatal(err)
	}
	if b[18] != 1 || b[19] != 1 {
		t.Fatalf("sealed %s has file format versions %d/%d, want 1/1 (not WAL)", dst, b[18], b[19])
	}
}

// fileBytes is a file as a SizeReaderAt.
func fileBytes(t testing.TB, path string) *io.SectionReader {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return io.NewSectionReader(f, 0, st.Size())
}

// sealedLayer makes a layer with a parent, data, tombstones, hibernate
// blocks and a label, seals it and returns the sealed file's path.
func sealedReaderLayer(t testing.TB, size int64) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "layer.db")
	f, err := sqlitelayer.Create(src, sqlitelayer.CreateOptions{Size: size, Label: "golden", Parent: rawParent(t, dir, size)})
	if err != nil {
		t.Fatal(err)
	}
	for i, off := range []int64{0, 4096, 1 << 20, size/2 + 512, size - 8192} {
		mustWrite(t, f, fill(8192, byte(i+1)), off)
	}
	if err := f.Zero(3<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Hibernate().WriteAt(fill(1<<20, 9), 5<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	sealed := filepath.Join(dir, "sealed.db")
	sealForTest(t, src, sealed)
	return sealed
}

func collectExtents(t testing.TB, l disklayer.Layer, off, n int64) []disklayer.Extent {
	t.Helper()
	var out []disklayer.Extent
	for e, err := range l.Extents(off, n) {
		if err != nil {
			t.Fatalf("extents: %v", err)
		}
		out = append(out, e)
	}
	return out
}

// TestOpenReaderAt: a sealed layer opened over its bytes reads, maps and
// describes itself exactly as the file opened read-only does, and
// refuses writes.
func TestOpenReaderAt(t *testing.T) {
	const size = 16 << 20
	sealed := sealedReaderLayer(t, size)
	want, err := sqlitelayer.Open(sealed, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()
	got, err := sqlitelayer.OpenReaderAt("blob:sealed", fileBytes(t, sealed), sqlitelayer.ReaderAtOptions{Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want.Info(), got.Info()); diff != "" {
		t.Errorf("Info differs (-file +reader):\n%s", diff)
	}
	if info := got.Info(); !info.ReadOnly || info.Parent == nil || info.Label != "golden" {
		t.Errorf("Info %+v: want the sealed layer's row (read-only, a parent, label golden)", info)
	}
	if got.Path() != "blob:sealed" {
		t.Errorf("Path %q, want the name given", got.Path())
	}
	if !bytes.Equal(mustRead(t, want, 0, size), mustRead(t, got, 0, size)) {
		t.Error("disk content differs")
	}
	if !bytes.Equal(mustRead(t, want.Hibernate(), 4<<20, 3<<20), mustRead(t, got.Hibernate(), 4<<20, 3<<20)) {
		t.Error("hibernate content differs")
	}
	if diff := cmp.Diff(collectExtents(t, want, 0, size), collectExtents(t, got, 0, size)); diff != "" {
		t.Errorf("extents differ (-file +reader):\n%s", diff)
	}
	ws, err := want.Stats()
	if err != nil {
		t.Fatal(err)
	}
	gs, err := got.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if ws != gs {
		t.Errorf("stats: file %+v, reader %+v", ws, gs)
	}
	if _, err := got.WriteAt(fill(4096, 1), 0); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("write: %v, want ErrReadOnly", err)
	}
	if err := got.Zero(0, 4096); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("zero: %v, want ErrReadOnly", err)
	}
	if err := got.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := got.ReadAt(make([]byte, 4096), 0); !errors.Is(err, disklayer.ErrClosed) {
		t.Errorf("read after close: %v, want ErrClosed", err)
	}
}

// TestOpenReaderAtRefuses: a layer in WAL mode (its file alone may miss
// commits), a truncated one, and bytes that are no layer are refused.
func TestOpenReaderAtRefuses(t *testing.T) {
	dir := t.TempDir()
	wal := filepath.Join(dir, "wal.db")
	f, err := sqlitelayer.Create(wal, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, f, fill(4096, 1), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = sqlitelayer.OpenReaderAt("wal", fileBytes(t, wal), sqlitelayer.ReaderAtOptions{})
	if !errors.Is(err, disklayer.ErrInvalid) || !strings.Contains(err.Error(), "WAL") {
		t.Errorf("open of a WAL-mode layer: %v; want ErrInvalid saying WAL", err)
	}

	sealed := sealedReaderLayer(t, 4<<20)
	whole := fileBytes(t, sealed)
	short := io.NewSectionReader(whole, 0, whole.Size()-4096)
	if _, err := sqlitelayer.OpenReaderAt("short", short, sqlitelayer.ReaderAtOptions{}); !errors.Is(err, disklayer.ErrCorrupt) {
		t.Errorf("open of a truncated layer: %v; want ErrCorrupt", err)
	}
	junk := io.NewSectionReader(bytes.NewReader(fill(8192, 3)), 0, 8192)
	if _, err := sqlitelayer.OpenReaderAt("junk", junk, sqlitelayer.ReaderAtOptions{}); !errors.Is(err, disklayer.ErrNotLayer) {
		t.Errorf("open of bytes that are no layer: %v; want ErrNotLayer", err)
	}
}

// TestOpenReaderAtOverChunks: over a chunk reader, opening the layer and
// reading a sector pull only the chunks they touch; reads are the
// file's bytes; a chunk changed in the store is an EIO, never data.
func TestOpenReaderAtOverChunks(t *testing.T) {
	const size = 64 << 20
	dir := t.TempDir()
	src := filepath.Join(dir, "layer.db")
	f, err := sqlitelayer.Create(src, sqlitelayer.CreateOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < 16<<20; off += 1 << 20 {
		mustWrite(t, f, fill(1<<20, byte(off>>20)), off)
	}
	// A sector found by its content in the file below.
	marked := make([]byte, 4096)
	rand.NewChaCha8([32]byte{1}).Read(marked)
	mustWrite(t, f, marked, 12<<20)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	sealed := filepath.Join(dir, "sealed.db")
	sealForTest(t, src, sealed)
	plain, err := sqlitelayer.Open(sealed, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()

	const cs = chunks.MinChunkSize
	blob := describeBlob(t, sealed, cs)
	fs, err := chunks.OpenFileSource(sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	r, err := chunks.NewReader(blob, fs, chunks.Options{ReadAheadBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l, err := sqlitelayer.OpenReaderAt(blob.Name, r, sqlitelayer.ReaderAtOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	opened := r.Stats()
	if got := mustRead(t, l, 7<<20+8192, 4096); !bytes.Equal(got, mustRead(t, plain, 7<<20+8192, 4096)) {
		t.Fatal("a sector read over chunks differs from the file's")
	}
	read := r.Stats()
	t.Logf("layer of %d chunks of %d bytes: open fetched %d chunks, a 4 KiB read %d more", len(blob.Chunks), cs, opened.FetchedChunks, read.FetchedChunks-opened.FetchedChunks)
	// Open reads the header, the schema and the layer row (a few pages
	// at the start of the file); the read, the B-tree path to its row
	// and the row's overflow page. Each is at most a chunk apart.
	if opened.FetchedChunks > 4 || read.FetchedChunks-opened.FetchedChunks > 4 {
		t.Errorf("open fetched %d chunks and a 4 KiB read %d more, of %d: want a few each", opened.FetchedChunks, read.FetchedChunks-opened.FetchedChunks, len(blob.Chunks))
	}
	mustRead(t, l, 7<<20+8192, 4096)
	if again := r.Stats(); again.FetchedChunks != read.FetchedChunks {
		t.Errorf("reading the sector again fetched %d chunks", again.FetchedChunks-read.FetchedChunks)
	}
	if !bytes.Equal(mustRead(t, l, 0, size), mustRead(t, plain, 0, size)) {
		t.Error("the disk read over chunks differs from the file's")
	}

	// Two boots on one machine: the second fetches nothing.
	cacheDir := t.TempDir()
	for boot := range 2 {
		cache, err := chunks.OpenCache(cacheDir, 0)
		if err != nil {
			t.Fatal(err)
		}
		r, err := chunks.NewReader(blob, fs, chunks.Options{Cache: cache})
		if err != nil {
			t.Fatal(err)
		}
		l, err := sqlitelayer.OpenReaderAt(blob.Name, r, sqlitelayer.ReaderAtOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mustRead(t, l, 0, 16<<20), mustRead(t, plain, 0, 16<<20)) {
			t.Errorf("boot %d: the disk read over cached chunks differs from the file's", boot)
		}
		l.Close()
		r.Close()
		if st := r.Stats(); boot == 1 && (st.FetchedChunks != 0 || st.CacheHits == 0) {
			t.Errorf("second boot: %+v; want nothing fetched, everything from the cache", st)
		}
	}

	// The store's copy changes under a chunk that holds disk data.
	tampered := filepath.Join(dir, "tampered.db")
	b, err := os.ReadFile(sealed)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, marked[:256]) // in the row's leaf page
	if i < 0 || bytes.Contains(b[i+1:], marked[:256]) {
		t.Fatal("the marked sector is not in the sealed file once")
	}
	b[i+100] ^= 0xff
	if err := os.WriteFile(tampered, b, 0o644); err != nil {
		t.Fatal(err)
	}
	ts, err := chunks.OpenFileSource(tampered)
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	tr, err := chunks.NewReader(blob, ts, chunks.Options{ReadAheadBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tl, err := sqlitelayer.OpenReaderAt(blob.Name, tr, sqlitelayer.ReaderAtOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	if _, err := tl.ReadAt(make([]byte, 4096), 12<<20); !errors.Is(err, chunks.ErrMismatch) || !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a changed chunk: %v; want ErrMismatch, EIO", err)
	}
	if got := mustRead(t, tl, 0, 4096); !bytes.Equal(got, mustRead(t, plain, 0, 4096)) {
		t.Error("read of good chunks after a bad one: wrong bytes")
	}
}

func describeBlob(t testing.TB, path string, chunkSize int64) chunks.Blob {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	digests, size, err := chunks.HashChunks(f, chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	return chunks.Blob{Name: "sha256:test-" + filepath.Base(path), Size: size, ChunkSize: chunkSize, Chunks: digests}
}

// failingSource is a FileSource whose fetches fail while down is set: a
// store that went away.
type failingSource struct {
	*chunks.FileSource
	down atomic.Bool
}

var errStoreDown = errors.New("injected: connection refused")

func (s *failingSource) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.FileSource.Fetch(ctx, off, n)
}

// TestOpenReaderAtStoreDown: a read that needs a store that stays away
// fails, after the Reader's MaxWait, with an error that is still EIO
// through SQLite (what NBD tells the guest); once the store is back,
// reads succeed on the same layer.
func TestOpenReaderAtStoreDown(t *testing.T) {
	const size = 16 << 20
	sealed := sealedReaderLayer(t, size)
	blob := describeBlob(t, sealed, chunks.MinChunkSize)
	fs, err := chunks.OpenFileSource(sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	src := &failingSource{FileSource: fs}
	r, err := chunks.NewReader(blob, src, chunks.Options{MaxWait: 200 * time.Millisecond, ReadAheadBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l, err := sqlitelayer.OpenReaderAt(blob.Name, r, sqlitelayer.ReaderAtOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	src.down.Store(true)
	_, err = l.ReadAt(make([]byte, 8192), size-8192)
	if !errors.Is(err, chunks.ErrUnavailable) || !errors.Is(err, syscall.EIO) || !errors.Is(err, errStoreDown) {
		t.Fatalf("read with the store down: %v; want ErrUnavailable, EIO and the store's error", err)
	}
	src.down.Store(false)
	plain, err := sqlitelayer.Open(sealed, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if !bytes.Equal(mustRead(t, l, 0, size), mustRead(t, plain, 0, size)) {
		t.Error("after the store came back, the disk differs from the file's")
	}
}
