package chunks

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

const testPageSize = 4096

// pagedBlob is a blob file and its page-digest blob file, as a pushed
// layer with page digests is.
type pagedBlob struct {
	path, digestsPath string
	data              []byte
	pages             Blob // the page-digest blob, by chunks of 4 KiB
	id                Digest
}

// testPaged writes size random bytes (from seed) and their page
// digests to files in dir.
func testPaged(t testing.TB, dir string, size int64, seed uint64) pagedBlob {
	t.Helper()
	path, data, _ := testBlob(t, dir, size, MinChunkSize, seed)
	var digests []byte
	for off := int64(0); off < size; off += testPageSize {
		sum := sha256.Sum256(data[off:min(off+testPageSize, size)])
		digests = append(digests, sum[:]...)
	}
	dp := filepath.Join(dir, "pages")
	if err := os.WriteFile(dp, digests, 0o644); err != nil {
		t.Fatal(err)
	}
	pages := describe(t, dp, SmallestChunkSize)
	pages.Name = "page digests of the test blob"
	return pagedBlob{path: path, digestsPath: dp, data: data, pages: pages, id: sha256.Sum256(data)}
}

// rangeSource is a FileSource that records the pages of each fetch and,
// with log set, appends "OFF N" per fetch to that file (O_APPEND: one
// write per line, whole, across processes).
type rangeSource struct {
	*FileSource
	log    *os.File
	mu     sync.Mutex
	ranges [][2]int64
}

func openRanges(t testing.TB, path, log string) *rangeSource {
	t.Helper()
	fs, err := OpenFileSource(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	s := &rangeSource{FileSource: fs}
	if log != "" {
		if s.log, err = os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.log.Close() })
	}
	return s
}

func (s *rangeSource) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	s.mu.Lock()
	s.ranges = append(s.ranges, [2]int64{off, n})
	s.mu.Unlock()
	if s.log != nil {
		if _, err := fmt.Fprintf(s.log, "%d %d\n", off, n); err != nil {
			return nil, err
		}
	}
	return s.FileSource.Fetch(ctx, off, n)
}

func (s *rangeSource) fetched() [][2]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][2]int64(nil), s.ranges...)
}

// pageCounts counts how many times each page was fetched.
func pageCounts(ranges [][2]int64) map[int64]int {
	out := map[int64]int{}
	for _, r := range ranges {
		for p := r[0] / testPageSize; p*testPageSize < r[0]+r[1]; p++ {
			out[p]++
		}
	}
	return out
}

// newPageReader opens a PageReader of b from src, its page digests read
// from their file through a Reader with the same cache.
func newPageReader(t testing.TB, b pagedBlob, src Source, opts Options) *PageReader {
	t.Helper()
	dsrc, err := OpenFileSource(b.digestsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dsrc.Close() })
	dopts := opts
	dopts.ReadAheadBytes = -1
	dr := newReader(t, b.pages, dsrc, dopts)
	return newPageReaderOver(t, b, src, dr, opts)
}

func newPageReaderOver(t testing.TB, b pagedBlob, src Source, digests io.ReaderAt, opts Options) *PageReader {
	t.Helper()
	r, err := NewPageReader(PagedBlob{Name: "test-blob", ID: b.id, Size: int64(len(b.data)), PageSize: testPageSize, Digests: digests}, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestPageReaderReadAt: reads of every shape return the file's bytes; a
// read past the end is short with io.EOF; a second PageReader over the
// same cache fetches nothing; each page came from the Source once.
func TestPageReaderReadAt(t *testing.T) {
	dir := t.TempDir()
	b := testPaged(t, dir, 3*SpanBytes+5*testPageSize+100, 1)
	cache := openCache(t, filepath.Join(dir, "cache"), 0)
	src := openRanges(t, b.path, "")
	r := newPageReader(t, b, src, Options{Cache: cache})
	size := int64(len(b.data))
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		off := rng.Int64N(size)
		n := 1 + rng.Int64N(min(size-off, 3*testPageSize+1000))
		got := make([]byte, n)
		if _, err := r.ReadAt(got, off); err != nil {
			t.Fatalf("read [%d, %d): %v", off, off+n, err)
		}
		if !bytes.Equal(got, b.data[off:off+n]) {
			t.Fatalf("read [%d, %d): other bytes than the file's", off, off+n)
		}
	}
	readAll(t, r, b.data, 7000, nil)
	tail := make([]byte, 200)
	if n, err := r.ReadAt(tail, size-100); n != 100 || err != io.EOF || !bytes.Equal(tail[:n], b.data[size-100:]) {
		t.Errorf("read across the end: %d, %v", n, err)
	}
	for p, n := range pageCounts(src.fetched()) {
		if n != 1 {
			t.Errorf("page %d fetched %d times", p, n)
		}
	}
	r.Close()

	src2 := openRanges(t, b.path, "")
	r2 := newPageReader(t, b, src2, Options{Cache: cache})
	readAll(t, r2, b.data, 10000, nil)
	if f := src2.fetched(); len(f) != 0 {
		t.Errorf("second reader over the same cache: %d fetches, want none", len(f))
	}
	if st := r2.Stats(); st.CacheHits == 0 || st.FetchedBytes != 0 {
		t.Errorf("second reader: %+v", st)
	}
}

// TestPageCoalescing: a read's missing pages are fetched in one fetch
// per run of adjacent missing pages within a span, and nothing else
// (read-ahead off).
func TestPageCoalescing(t *testing.T) {
	dir := t.TempDir()
	b := testPaged(t, dir, 2*SpanBytes, 2)
	src := openRanges(t, b.path, "")
	r := newPageReader(t, b, src, Options{Cache: openCache(t, filepath.Join(dir, "cache"), 0), ReadAheadBytes: -1})
	read := func(first, last int64) {
		t.Helper()
		got := make([]byte, (last-first+1)*testPageSize)
		if _, err := r.ReadAt(got, first*testPageSize); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, b.data[first*testPageSize:(last+1)*testPageSize]) {
			t.Fatalf("pages %d-%d: other bytes", first, last)
		}
	}
	read(5, 5)
	read(7, 7)
	read(3, 12)
	per := int64(SpanBytes / testPageSize)
	read(per-4, per+3) // across two spans: a fetch each
	want := [][2]int64{
		{5 * testPageSize, testPageSize}, {7 * testPageSize, testPageSize},
		{3 * testPageSize, 2 * testPageSize}, {6 * testPageSize, testPageSize}, {8 * testPageSize, 5 * testPageSize},
		{(per - 4) * testPageSize, 4 * testPageSize}, {per * testPageSize, 4 * testPageSize},
	}
	got := src.fetched()
	// The runs of one read are fetched in parallel: compare as sets.
	key := func(rs [][2]int64) map[[2]int64]int {
		m := map[[2]int64]int{}
		for _, r := range rs {
			m[r]++
		}
		return m
	}
	if fmt.Sprint(key(got)) != fmt.Sprint(key(want)) {
		t.Errorf("fetches %v, want %v", got, want)
	}
}

// TestPageReadAhead: a sequential read a page at a time is fetched a
// window at a time, and fetches at most a quarter more than it read.
func TestPageReadAhead(t *testing.T) {
	dir := t.TempDir()
	b := testPaged(t, dir, 4*SpanBytes, 3)
	src := openRanges(t, b.path, "")
	r := newPageReader(t, b, src, Options{})
	const pages = 512
	got := make([]byte, pages*testPageSize)
	for p := int64(0); p < pages; p++ {
		if _, err := r.ReadAt(got[p*testPageSize:(p+1)*testPageSize], p*testPageSize); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, b.data[:len(got)]) {
		t.Fatal("other bytes")
	}
	r.Close() // read-ahead in flight finishes
	st := r.Stats()
	t.Logf("%d pages read one at a time: %+v", pages, st)
	if st.FetchedChunks > pages/8 || st.ReadAhead == 0 {
		t.Errorf("%d fetches for %d pages read in order, read-ahead %d pages: want at most %d fetches", st.FetchedChunks, pages, st.ReadAhead, pages/8)
	}
	if float64(st.FetchedBytes) > 1.25*float64(len(got)) {
		t.Errorf("fetched %d bytes for %d read", st.FetchedBytes, len(got))
	}
}

// TestTamperedPage: a page whose bytes changed in the store is an
// error naming the blob and the page, wrapping ErrMismatch and EIO;
// it is not cached (a reader over the right bytes fetches it again);
// the other pages still read.
func TestTamperedPage(t *testing.T) {
	dir := t.TempDir()
	b := testPaged(t, dir, SpanBytes, 4)
	bad := bytes.Clone(b.data)
	bad[9*testPageSize+17] ^= 1
	badPath := filepath.Join(dir, "tampered")
	if err := os.WriteFile(badPath, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	cache := openCache(t, filepath.Join(dir, "cache"), 0)
	r := newPageReader(t, b, openRanges(t, badPath, ""), Options{Cache: cache, ReadAheadBytes: -1})
	got := make([]byte, 4*testPageSize)
	_, err := r.ReadAt(got, 8*testPageSize)
	if !errors.Is(err, ErrMismatch) || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "test-blob page 9 ") {
		t.Fatalf("read over the tampered page: %v, want ErrMismatch naming the blob and page 9", err)
	}
	if _, err := r.ReadAt(got, 20*testPageSize); err != nil || !bytes.Equal(got, b.data[20*testPageSize:24*testPageSize]) {
		t.Errorf("read elsewhere: %v", err)
	}
	r.Close()
	src := openRanges(t, b.path, "")
	r2 := newPageReader(t, b, src, Options{Cache: cache, ReadAheadBytes: -1})
	if _, err := r2.ReadAt(got, 8*testPageSize); err != nil || !bytes.Equal(got, b.data[8*testPageSize:12*testPageSize]) {
		t.Fatalf("read over the right bytes: %v", err)
	}
	if c := pageCounts(src.fetched()); c[9] != 1 {
		t.Errorf("page 9 fetched %d times by a reader over the right bytes: the tampered page was cached", c[9])
	}
}

// TestTamperedPageDigests: a page-digest blob whose bytes changed in
// the store is refused by its chunk digests before any page is checked
// against it: the read fails naming the page digests, nothing is read
// from the blob.
func TestTamperedPageDigests(t *testing.T) {
	dir := t.TempDir()
	b := testPaged(t, dir, SpanBytes, 5)
	digests, err := os.ReadFile(b.digestsPath)
	if err != nil {
		t.Fatal(err)
	}
	// A consistent forgery: page 3 and its digest both replaced.
	forged := bytes.Clone(b.data)
	forged[3*testPageSize] ^= 0xff
	sum := sha256.Sum256(forged[3*testPageSize : 4*testPageSize])
	copy(digests[3*sha256.Size:], sum[:])
	forgedPath, forgedDigests := filepath.Join(dir, "forged"), filepath.Join(dir, "forged-pages")
	if err := os.WriteFile(forgedPath, forged, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(forgedDigests, digests, 0o644); err != nil {
		t.Fatal(err)
	}
	dsrc, err := OpenFileSource(forgedDigests)
	if err != nil {
		t.Fatal(err)
	}
	defer dsrc.Close()
	dr := newReader(t, b.pages, dsrc, Options{ReadAheadBytes: -1})
	src := openRanges(t, forgedPath, "")
	r := newPageReaderOver(t, b, src, dr, Options{ReadAheadBytes: -1})
	got := make([]byte, testPageSize)
	_, err = r.ReadAt(got, 3*testPageSize)
	if !errors.Is(err, ErrMismatch) || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "page digests") {
		t.Fatalf("read with forged page digests: %v, want ErrMismatch naming the page digests", err)
	}
	if f := src.fetched(); len(f) != 0 {
		t.Errorf("the blob was fetched from (%v) before its page digests were verified", f)
	}
}

// TestPageGoroutinesFetchOnce: twelve PageReaders over one cache
// directory, reading the blob at once in orders of their own, fetch
// each page from the Source once.
func TestPageGoroutinesFetchOnce(t *testing.T) {
	dir := t.TempDir()
	b := testPaged(t, dir, 2*SpanBytes+3*testPageSize, 6)
	src := openRanges(t, b.path, "")
	cacheDir := filepath.Join(dir, "cache")
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			cache, err := OpenCache(cacheDir, 0)
			if err == nil {
				r := newPageReader(t, b, src, Options{Cache: cache})
				step := int64(3 * testPageSize)
				err = readAllErr(r, b.data, step, rand.New(rand.NewPCG(uint64(g), 9)).Perm(int((int64(len(b.data))+step-1)/step)))
			}
			if err != nil {
				t.Errorf("goroutine %d: %v", g, err)
			}
		})
	}
	wg.Wait()
	checkPagesOnce(t, pageCounts(src.fetched()), int64(len(b.data)))
}

func checkPagesOnce(t *testing.T, counts map[int64]int, size int64) {
	t.Helper()
	pages := ChunkCount(size, testPageSize)
	for p := range pages {
		if n := counts[p]; n != 1 {
			t.Errorf("page %d fetched %d times, want once", p, n)
		}
	}
	if int64(len(counts)) != pages {
		t.Errorf("%d pages fetched, want %d", len(counts), pages)
	}
}

const pageChildEnv = "HIBDISK_PAGES_TEST_CHILD"

// TestPageProcessesFetchOnce: several processes (this test binary
// again) reading one blob through one cache directory fetch each page
// from the Source once, counted in a log the Source appends to; the
// cache lists the span files, and prune removes them.
func TestPageProcessesFetchOnce(t *testing.T) {
	if spec := os.Getenv(pageChildEnv); spec != "" {
		pageChildRead(t, spec)
		return
	}
	dir := t.TempDir()
	b := testPaged(t, dir, 3*SpanBytes, 7)
	cacheDir, log := filepath.Join(dir, "cache"), filepath.Join(dir, "fetches.log")
	const procs = 6
	cmds := make([]*exec.Cmd, procs)
	outs := make([]bytes.Buffer, procs)
	for i := range cmds {
		cmds[i] = exec.Command(os.Args[0], "-test.run=^TestPageProcessesFetchOnce$", "-test.v")
		cmds[i].Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%s,%d", pageChildEnv, b.path, cacheDir, log, i))
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	var fetched int64
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i].String())
		}
		var st Stats
		line, ok := findLine(outs[i].String(), "stats ")
		if !ok {
			t.Fatalf("child %d printed no stats:\n%s", i, outs[i].String())
		}
		if err := json.Unmarshal([]byte(line), &st); err != nil {
			t.Fatal(err)
		}
		fetched += st.FetchedBytes
	}
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ranges [][2]int64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var off, n int64
		if _, err := fmt.Sscanf(sc.Text(), "%d %d", &off, &n); err != nil {
			t.Fatalf("fetch log line %q: %v", sc.Text(), err)
		}
		ranges = append(ranges, [2]int64{off, n})
	}
	checkPagesOnce(t, pageCounts(ranges), int64(len(b.data)))
	if fetched != int64(len(b.data)) {
		t.Errorf("children fetched %d bytes, the blob has %d", fetched, len(b.data))
	}
	cache := openCache(t, cacheDir, 0)
	entries, err := cache.List()
	if err != nil {
		t.Fatal(err)
	}
	spans := 0
	for _, e := range entries {
		if e.Pages {
			spans++
			if e.Size != SpanBytes || !strings.HasPrefix(e.Name(), "sha256:") {
				t.Errorf("span entry %s: %d bytes, want %d", e.Name(), e.Size, SpanBytes)
			}
		}
	}
	if spans != 3 {
		t.Errorf("%d span files listed, want 3: %+v", spans, entries)
	}
	if _, err := cache.Prune(0); err != nil {
		t.Fatal(err)
	}
	if entries, _ := cache.List(); len(entries) != 0 {
		t.Errorf("after prune to 0: %d entries", len(entries))
	}
}

func pageChildRead(t *testing.T, spec string) {
	parts := strings.Split(spec, ",")
	path, cacheDir, log := parts[0], parts[1], parts[2]
	seed, _ := strconv.ParseUint(parts[3], 10, 64)
	b := testPaged(t, t.TempDir(), 3*SpanBytes, 7)
	if data, err := os.ReadFile(path); err != nil || !bytes.Equal(data, b.data) {
		t.Fatalf("the parent's blob %s: %v, or other bytes", path, err)
	}
	r := newPageReader(t, b, openRanges(t, path, log), Options{Cache: openCache(t, cacheDir, 0)})
	step := int64(5 * testPageSize)
	readAll(t, r, b.data, step, rand.New(rand.NewPCG(seed, 7)).Perm(int((int64(len(b.data))+step-1)/step)))
	r.Close()
	out, _ := json.Marshal(r.Stats())
	fmt.Printf("stats %s\n", out)
}
