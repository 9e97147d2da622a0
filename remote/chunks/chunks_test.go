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
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// testBlob writes size random bytes (from seed) to a file in dir and
// returns its path, its content and its Blob description.
func testBlob(t testing.TB, dir string, size, chunkSize int64, seed uint64) (string, []byte, Blob) {
	t.Helper()
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, 0))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	path := filepath.Join(dir, "blob")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data, describe(t, path, chunkSize)
}

// describe hashes the file at path as a manifest would.
func describe(t testing.TB, path string, chunkSize int64) Blob {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	digests, size, err := HashChunks(f, chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return Blob{Name: fmt.Sprintf("sha256:%x", sha256.Sum256(whole)), Size: size, ChunkSize: chunkSize, Chunks: digests}
}

// countingSource is a FileSource that counts its fetches per offset
// and, with log set, appends each fetch's offset to that file
// (O_APPEND: one write per line, whole, across processes).
type countingSource struct {
	*FileSource
	log   *os.File
	mu    sync.Mutex
	count map[int64]int
}

func openCounting(t testing.TB, path, log string) *countingSource {
	t.Helper()
	fs, err := OpenFileSource(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	s := &countingSource{FileSource: fs, count: map[int64]int{}}
	if log != "" {
		if s.log, err = os.OpenFile(log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.log.Close() })
	}
	return s
}

func (s *countingSource) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	s.mu.Lock()
	s.count[off]++
	s.mu.Unlock()
	if s.log != nil {
		if _, err := fmt.Fprintf(s.log, "%d\n", off); err != nil {
			return nil, err
		}
	}
	return s.FileSource.Fetch(ctx, off, n)
}

func (s *countingSource) fetches() map[int64]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[int64]int{}
	for k, v := range s.count {
		out[k] = v
	}
	return out
}

// faultySource injects failures into a FileSource: the first failFirst
// fetches fail with a transient error, or all of them while dead is set.
type faultySource struct {
	*FileSource
	failFirst int64
	dead      atomic.Bool
	calls     atomic.Int64
}

var errInjected = errors.New("injected: connection reset by peer")

func (s *faultySource) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	if s.calls.Add(1) <= s.failFirst || s.dead.Load() {
		return nil, errInjected
	}
	return s.FileSource.Fetch(ctx, off, n)
}

func newReader(t testing.TB, b Blob, src Source, opts Options) *Reader {
	t.Helper()
	r, err := NewReader(b, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func openCache(t testing.TB, dir string, maxBytes int64) *Cache {
	t.Helper()
	c, err := OpenCache(dir, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readAll reads the whole blob through r in pieces of step bytes, in
// the order of perm (or in order), and compares with want.
func readAll(t testing.TB, r io.ReaderAt, want []byte, step int64, perm []int) {
	t.Helper()
	if err := readAllErr(r, want, step, perm); err != nil {
		t.Fatal(err)
	}
}

// readAllErr is readAll for goroutines other than the test's.
func readAllErr(r io.ReaderAt, want []byte, step int64, perm []int) error {
	pieces := (int64(len(want)) + step - 1) / step
	got := make([]byte, len(want))
	for k := range pieces {
		i := k
		if perm != nil {
			i = int64(perm[k])
		}
		off := i * step
		end := min(off+step, int64(len(want)))
		if _, err := r.ReadAt(got[off:end], off); err != nil {
			return fmt.Errorf("read [%d, %d): %w", off, end, err)
		}
	}
	if !bytes.Equal(got, want) {
		return errors.New("the blob read through the Reader differs from the file")
	}
	return nil
}

// TestReadAt: reads of every shape return the file's bytes; a read
// past the end is short with io.EOF; a second Reader over the same
// cache fetches nothing.
func TestReadAt(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 5*cs+1234, cs, 1)
	cache := openCache(t, filepath.Join(dir, "cache"), 0)
	src := openCounting(t, path, "")
	r := newReader(t, blob, src, Options{Cache: cache})
	rng := rand.New(rand.NewPCG(2, 0))
	for range 500 {
		off := rng.Int64N(blob.Size)
		n := rng.Int64N(3*cs) + 1
		p := make([]byte, n)
		got, err := r.ReadAt(p, off)
		end := min(off+n, blob.Size)
		if end < off+n {
			if !errors.Is(err, io.EOF) || int64(got) != end-off {
				t.Fatalf("read of %d at %d past the end: %d, %v; want %d, io.EOF", n, off, got, err, end-off)
			}
		} else if err != nil || int64(got) != n {
			t.Fatalf("read of %d at %d: %d, %v", n, off, got, err)
		}
		if !bytes.Equal(p[:got], data[off:end]) {
			t.Fatalf("read of %d at %d: wrong bytes", n, off)
		}
	}
	if n, err := r.ReadAt(make([]byte, 10), blob.Size); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read at the end: %d, %v; want 0, io.EOF", n, err)
	}
	for off, n := range src.fetches() {
		if n != 1 {
			t.Errorf("chunk at %d fetched %d times, want once", off, n)
		}
	}
	if st := r.Stats(); st.FetchedBytes != blob.Size || st.FetchedChunks != int64(len(blob.Chunks)) {
		t.Errorf("stats %+v: want every chunk fetched once (%d bytes)", st, blob.Size)
	}

	// A second boot on the machine: everything comes from the cache.
	src2 := openCounting(t, path, "")
	r2 := newReader(t, blob, src2, Options{Cache: openCache(t, cache.Dir(), 0)})
	readAll(t, r2, data, 4096, nil)
	if st := r2.Stats(); st.FetchedChunks != 0 || st.CacheHits != int64(len(blob.Chunks)) || len(src2.fetches()) != 0 {
		t.Errorf("second reader: %+v, source fetches %v; want nothing fetched, %d cache hits", st, src2.fetches(), len(blob.Chunks))
	}
}

// TestGoroutinesFetchOnce: many goroutines, each with its own Reader
// and Cache over one directory (as separate jobs would have), reading
// the blob in different orders, fetch each chunk from the Source once.
func TestGoroutinesFetchOnce(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 40*cs, cs, 3)
	src := openCounting(t, path, "")
	cacheDir := filepath.Join(dir, "cache")
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			cache, err := OpenCache(cacheDir, 0)
			if err == nil {
				var r *Reader
				if r, err = NewReader(blob, src, Options{Cache: cache, Parallel: 3}); err == nil {
					defer r.Close()
					err = readAllErr(r, data, cs, rand.New(rand.NewPCG(uint64(g), 9)).Perm(len(blob.Chunks)))
				}
			}
			if err != nil {
				t.Errorf("goroutine %d: %v", g, err)
			}
		})
	}
	wg.Wait()
	checkOnce(t, src.fetches(), blob)
}

func checkOnce(t *testing.T, fetches map[int64]int, blob Blob) {
	t.Helper()
	for i := range int64(len(blob.Chunks)) {
		if n := fetches[i*blob.ChunkSize]; n != 1 {
			t.Errorf("chunk %d fetched %d times, want once", i, n)
		}
	}
	if len(fetches) != len(blob.Chunks) {
		t.Errorf("fetches at %d offsets, want %d", len(fetches), len(blob.Chunks))
	}
}

// The child process of TestProcessesFetchOnce.
const childEnv = "HIBDISK_CHUNKS_TEST_CHILD"

// TestProcessesFetchOnce: several processes (this test binary again)
// reading one blob through one cache directory fetch each chunk from
// the Source once, counted in a log the Source appends to.
func TestProcessesFetchOnce(t *testing.T) {
	if spec := os.Getenv(childEnv); spec != "" {
		childRead(t, spec)
		return
	}
	dir := t.TempDir()
	const cs = MinChunkSize
	path, _, blob := testBlob(t, dir, 48*cs, cs, 4)
	cacheDir, log := filepath.Join(dir, "cache"), filepath.Join(dir, "fetches.log")
	const procs = 6
	cmds := make([]*exec.Cmd, procs)
	outs := make([]bytes.Buffer, procs)
	for i := range cmds {
		cmds[i] = exec.Command(os.Args[0], "-test.run=^TestProcessesFetchOnce$", "-test.v")
		cmds[i].Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%s,%d", childEnv, path, cacheDir, log, i))
		cmds[i].Stdout, cmds[i].Stderr = &outs[i], &outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	var fetched, hits int64
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
		fetched += st.FetchedChunks
		hits += st.CacheHits
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	fetches := map[int64]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		off, err := strconv.ParseInt(sc.Text(), 10, 64)
		if err != nil {
			t.Fatalf("fetch log line %q: %v", sc.Text(), err)
		}
		fetches[off]++
	}
	checkOnce(t, fetches, blob)
	if n := int64(len(blob.Chunks)); fetched != n || fetched+hits != procs*n {
		t.Errorf("children fetched %d chunks and hit the cache %d times: want %d fetched, %d in all", fetched, hits, n, procs*n)
	}
}

func findLine(out, prefix string) (string, bool) {
	for line := range strings.SplitSeq(out, "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			return rest, true
		}
	}
	return "", false
}

// childRead reads the whole blob, in an order of its own, and prints
// its stats.
func childRead(t *testing.T, spec string) {
	parts := strings.Split(spec, ",")
	path, cacheDir, log := parts[0], parts[1], parts[2]
	seed, _ := strconv.ParseUint(parts[3], 10, 64)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blob := describe(t, path, MinChunkSize)
	r := newReader(t, blob, openCounting(t, path, log), Options{Cache: openCache(t, cacheDir, 0)})
	perm := rand.New(rand.NewPCG(seed, 7)).Perm(len(blob.Chunks))
	readAll(t, r, data, MinChunkSize, perm)
	b, _ := json.Marshal(r.Stats())
	fmt.Printf("stats %s\n", b)
}

// TestTamperedChunk: a chunk whose bytes changed in the store is an
// error naming the blob and the chunk, wrapping ErrMismatch and EIO; it
// is not cached; the other chunks still read.
func TestTamperedChunk(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 4*cs, cs, 5)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{data[2*cs+100] ^ 1}, 2*cs+100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cache := openCache(t, filepath.Join(dir, "cache"), 0)
	src := openCounting(t, path, "")
	r := newReader(t, blob, src, Options{Cache: cache, ReadAheadBytes: -1})
	p := make([]byte, 4096)
	_, err = r.ReadAt(p, 2*cs)
	if !errors.Is(err, ErrMismatch) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of the tampered chunk: %v; want ErrMismatch and EIO", err)
	}
	for _, s := range []string{blob.Name, "chunk 2"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %q", err, s)
		}
	}
	if src.fetches()[2*cs] != 1 {
		t.Errorf("the tampered chunk was fetched %d times, want once (no retry)", src.fetches()[2*cs])
	}
	entries, err := cache.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("cache holds %d chunks after a refused one, want none", len(entries))
	}
	if _, err := r.ReadAt(p, cs); err != nil || !bytes.Equal(p, data[cs:cs+4096]) {
		t.Errorf("read of a good chunk after the bad one: %v", err)
	}
	// Asked again, the chunk is fetched and refused again, not served.
	if _, err := r.ReadAt(p, 2*cs+4096); !errors.Is(err, ErrMismatch) {
		t.Errorf("second read of the tampered chunk: %v; want ErrMismatch", err)
	}
}

// TestDamagedCacheFile: a cached file with other bytes (torn by a power
// loss, or damaged) is not served: it is fetched again and replaced.
func TestDamagedCacheFile(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 3*cs, cs, 6)
	cacheDir := filepath.Join(dir, "cache")
	readAll(t, newReader(t, blob, openCounting(t, path, ""), Options{Cache: openCache(t, cacheDir, 0)}), data, cs, nil)
	cache := openCache(t, cacheDir, 0)
	torn := cache.path(blob.Chunks[1])
	if err := os.Truncate(torn, cs/2); err != nil {
		t.Fatal(err)
	}
	src := openCounting(t, path, "")
	r := newReader(t, blob, src, Options{Cache: cache, ReadAheadBytes: -1})
	readAll(t, r, data, cs, nil)
	if f := src.fetches(); len(f) != 1 || f[cs] != 1 {
		t.Errorf("fetches %v: want chunk 1 (at %d) alone, once", f, cs)
	}
	if b, err := os.ReadFile(torn); err != nil || sha256.Sum256(b) != blob.Chunks[1] {
		t.Errorf("the damaged file was not replaced by the good chunk (%v)", err)
	}
}

// TestEviction: the cache stays within its bound, keeps what was used
// last, and Prune empties it.
func TestEviction(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 12*cs, cs, 7)
	const bound = 3*cs + cs/2
	cache := openCache(t, filepath.Join(dir, "cache"), bound)
	r := newReader(t, blob, openCounting(t, path, ""), Options{Cache: cache, ReadAheadBytes: -1})
	p := make([]byte, cs)
	for i := range int64(len(blob.Chunks)) {
		if _, err := r.ReadAt(p, i*cs); err != nil || !bytes.Equal(p, data[i*cs:(i+1)*cs]) {
			t.Fatalf("read chunk %d: %v", i, err)
		}
		var total int64
		entries, err := cache.List()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			total += e.Size
		}
		if total > bound {
			t.Fatalf("after chunk %d the cache holds %d bytes, bound %d", i, total, bound)
		}
	}
	entries, err := cache.List()
	if err != nil {
		t.Fatal(err)
	}
	last := blob.Chunks[len(blob.Chunks)-1]
	if len(entries) == 0 || entries[len(entries)-1].Digest != last {
		t.Errorf("the chunk used last is not the most recent of %d entries", len(entries))
	}
	res, err := cache.Prune(0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kept != 0 || res.KeptBytes != 0 || res.Removed != len(entries) {
		t.Errorf("prune to 0: %+v, want all %d removed", res, len(entries))
	}
	if files, _ := filepath.Glob(filepath.Join(cache.root(), "*", "*")); len(files) != 0 {
		t.Errorf("prune to 0 left %v", files)
	}
}

// TestRetryThenSuccess: transient failures are retried and the read
// succeeds with the right bytes.
func TestRetryThenSuccess(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 2*cs, cs, 8)
	fs, err := OpenFileSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	src := &faultySource{FileSource: fs, failFirst: 3}
	r := newReader(t, blob, src, Options{ReadAheadBytes: -1})
	readAll(t, r, data, cs, nil)
	if st := r.Stats(); st.Retries != 3 || st.FetchedChunks != 2 {
		t.Errorf("stats %+v: want 3 retries, 2 chunks fetched", st)
	}
}

// TestDeadSource: a Source that keeps failing makes reads fail with
// ErrUnavailable (EIO) after MaxWait, and later reads fail without a
// new wait; once it works again, reads succeed.
func TestDeadSource(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 3*cs, cs, 9)
	fs, err := OpenFileSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	src := &faultySource{FileSource: fs}
	src.dead.Store(true)
	r := newReader(t, blob, src, Options{Cache: openCache(t, filepath.Join(dir, "cache"), 0), MaxWait: 300 * time.Millisecond, ReadAheadBytes: -1})
	p := make([]byte, 4096)
	_, err = r.ReadAt(p, 0)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.EIO) || !errors.Is(err, errInjected) {
		t.Fatalf("read from a dead source: %v; want ErrUnavailable, EIO and the source's error", err)
	}
	if r.Stats().Retries == 0 {
		t.Error("the dead source was not retried")
	}
	calls := src.calls.Load()
	if _, err := r.ReadAt(p, cs); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("second read from a dead source: %v; want ErrUnavailable", err)
	}
	if n := src.calls.Load() - calls; n != 1 {
		t.Errorf("second read tried the source %d times, want once (it has been down for MaxWait)", n)
	}
	src.dead.Store(false)
	readAll(t, r, data, cs, nil)
}

// TestGone: a blob missing from the store is one error, not retried.
func TestGone(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, _, blob := testBlob(t, dir, 3*cs, cs, 10)
	if err := os.Truncate(path, cs); err != nil {
		t.Fatal(err)
	}
	r := newReader(t, blob, openCounting(t, path, ""), Options{ReadAheadBytes: -1})
	_, err := r.ReadAt(make([]byte, 10), 2*cs)
	if !errors.Is(err, ErrGone) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a truncated blob: %v; want ErrGone", err)
	}
	if st := r.Stats(); st.Retries != 0 {
		t.Errorf("a gone blob was retried %d times", st.Retries)
	}
}

// TestReadAhead: reads moving through the chunks in order load the next
// chunks ahead, and nothing is fetched twice.
func TestReadAhead(t *testing.T) {
	dir := t.TempDir()
	const cs = MinChunkSize
	path, data, blob := testBlob(t, dir, 32*cs, cs, 11)
	src := openCounting(t, path, "")
	r := newReader(t, blob, src, Options{ReadAheadBytes: 4 * cs})
	readAll(t, r, data, 4096, nil)
	st := r.Stats()
	if st.ReadAhead == 0 {
		t.Error("sequential reads loaded nothing ahead")
	}
	checkOnce(t, src.fetches(), blob)
	if st.FetchedBytes != blob.Size {
		t.Errorf("fetched %d bytes of a %d-byte blob", st.FetchedBytes, blob.Size)
	}
}

func TestBlobValidate(t *testing.T) {
	for _, b := range []Blob{
		{Name: "small", Size: 10, ChunkSize: SmallestChunkSize / 2, Chunks: make([]Digest, 1)},
		{Name: "odd", Size: 10, ChunkSize: 3 << 16, Chunks: make([]Digest, 1)},
		{Name: "count", Size: MinChunkSize + 1, ChunkSize: MinChunkSize, Chunks: make([]Digest, 1)},
	} {
		if _, err := NewReader(b, nil, Options{}); err == nil || !strings.Contains(err.Error(), b.Name) {
			t.Errorf("blob %s: %v, want an error naming it", b.Name, err)
		}
	}
}

// TestCacheBoundFromEnvironment: a cache opened with no bound takes
// $HIBDISK_CACHE_SIZE, with K/M/G/T suffixes, and refuses what is not a
// size above zero.
func TestCacheBoundFromEnvironment(t *testing.T) {
	for v, want := range map[string]int64{"": DefaultCacheBytes, "123": 123, "64K": 64 << 10, "32G": 32 << 30, "2TiB": 2 << 40, " 5M ": 5 << 20} {
		t.Setenv("HIBDISK_CACHE_SIZE", v)
		c, err := OpenCache(t.TempDir(), 0)
		if err != nil || c.MaxBytes() != want {
			t.Errorf("HIBDISK_CACHE_SIZE=%q: bound %v, %v; want %d", v, c, err, want)
		}
	}
	for _, v := range []string{"lots", "0", "-5", "5X", "99999999999T"} {
		t.Setenv("HIBDISK_CACHE_SIZE", v)
		if _, err := OpenCache(t.TempDir(), 0); err == nil || !strings.Contains(err.Error(), "HIBDISK_CACHE_SIZE") {
			t.Errorf("HIBDISK_CACHE_SIZE=%q: %v; want an error naming the variable", v, err)
		}
	}
	t.Setenv("HIBDISK_CACHE_SIZE", "1M")
	if c, err := OpenCache(t.TempDir(), 4<<20); err != nil || c.MaxBytes() != 4<<20 {
		t.Errorf("an explicit bound: %v, %v; want it to win over the environment", c, err)
	}
}
