package chunks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultCacheBytes is the size bound of a Cache opened with maxBytes 0,
// unless $HIBDISK_CACHE_SIZE says otherwise (DefaultMaxBytes).
const DefaultCacheBytes = 16 << 30

// DefaultMaxBytes is the machine's bound on its cache: $HIBDISK_CACHE_SIZE
// (bytes, or with a K, M, G or T suffix: powers of 1024), else
// DefaultCacheBytes. A value it cannot read is an error naming the
// variable, never a silent default.
func DefaultMaxBytes() (int64, error) {
	v := os.Getenv("HIBDISK_CACHE_SIZE")
	if v == "" {
		return DefaultCacheBytes, nil
	}
	n, err := parseBytes(v)
	if err == nil && n == 0 {
		err = errors.New("a cache of no bytes cannot hold the chunk being read")
	}
	if err != nil {
		return 0, fmt.Errorf("HIBDISK_CACHE_SIZE=%q: %w; set it to a size such as 32G, or unset it for %d GiB", v, err, DefaultCacheBytes>>30)
	}
	return n, nil
}

// parseBytes reads a non-negative size: digits, then an optional K, M, G
// or T (powers of 1024, an optional B or iB after it).
func parseBytes(v string) (int64, error) {
	s := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(v)), "B"), "I")
	shift := 0
	if s != "" {
		if i := strings.IndexByte("KMGT", s[len(s)-1]); i >= 0 {
			shift, s = 10*(i+1), s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64>>shift {
		return 0, errors.New("not a size")
	}
	return n << shift, nil
}

// staleAfter: a temporary or lock file this old, with nobody holding it,
// was left by a process that died; Prune removes it.
const staleAfter = time.Hour

// Cache is a directory of verified chunks keyed by digest, shared by
// every process of the machine: DIR/chunks/sha256/<2 hex>/<64 hex>.
// See the package documentation for what it guarantees. It is bounded:
// when what this process knows of its size passes the bound, the least
// recently used chunks (by modification time, which every use sets) are
// removed until it fits. Other processes' writes are counted at the
// next scan, so the directory may pass the bound briefly by what they
// added since; the next scan brings it back.
type Cache struct {
	dir      string
	maxBytes int64

	mu        sync.Mutex
	scanned   bool
	estimate  int64 // bytes at the last scan plus what this process put since
	sinceScan int64 // bytes this process put since the last scan
}

// DefaultDir is the machine's cache directory: $HIBDISK_CACHE, else
// $XDG_CACHE_HOME/hibdisk, else ~/.cache/hibdisk.
func DefaultDir() (string, error) {
	if d := os.Getenv("HIBDISK_CACHE"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("find the chunk cache: %w; set HIBDISK_CACHE to a directory", err)
	}
	return filepath.Join(d, "hibdisk"), nil
}

// OpenCache opens (making it if needed) the cache in dir, bounded to
// maxBytes of chunks (0 means DefaultMaxBytes).
func OpenCache(dir string, maxBytes int64) (*Cache, error) {
	if maxBytes < 0 {
		return nil, fmt.Errorf("chunk cache %s: negative size bound %d", dir, maxBytes)
	}
	if maxBytes == 0 {
		var err error
		if maxBytes, err = DefaultMaxBytes(); err != nil {
			return nil, fmt.Errorf("chunk cache %s: %w", dir, err)
		}
	}
	c := &Cache{dir: dir, maxBytes: maxBytes}
	if err := os.MkdirAll(c.root(), 0o755); err != nil {
		return nil, fmt.Errorf("chunk cache: %w", err)
	}
	return c, nil
}

// Dir is the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// MaxBytes is the cache's size bound.
func (c *Cache) MaxBytes() int64 { return c.maxBytes }

func (c *Cache) root() string { return filepath.Join(c.dir, "chunks", "sha256") }

func (c *Cache) path(d Digest) string {
	h := hex.EncodeToString(d[:])
	return filepath.Join(c.root(), h[:2], h)
}

// get returns the verified content of chunk d, or ok false when the
// cache does not hold it. A file that does not match d (torn by a power
// loss, or damaged) is removed and is a miss. A hit marks the chunk used.
func (c *Cache) get(d Digest) (b []byte, ok bool, err error) {
	p := c.path(d)
	b, err = os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read cached chunk %s: %w; remove it, or empty the cache (hibdisk cache prune --max 0)", p, err)
	}
	if sha256.Sum256(b) != d {
		os.Remove(p)
		return nil, false, nil
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now) // LRU order; a failure only ages the chunk
	return b, true, nil
}

// put stores verified data as chunk d: written under a temporary name
// and renamed, so the final name only ever holds a complete file. Then,
// if the cache passed its bound, it evicts.
func (c *Cache) put(d Digest, data []byte) error {
	p := c.path(d)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("cache chunk %s: %w", d, err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*.tmp")
	if err != nil {
		return fmt.Errorf("cache chunk %s: %w", d, err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("cache chunk %s: %w", d, err)
	}
	return c.added(int64(len(data)))
}

// added accounts n bytes this process put, and prunes to the bound when
// the cache may have passed it, or after a sixteenth of the bound was
// added since the last scan (to count what other processes added).
func (c *Cache) added(n int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.scanned {
		entries, err := c.list()
		if err != nil {
			return err
		}
		c.estimate, c.scanned = 0, true
		for _, e := range entries {
			c.estimate += e.Size
		}
	}
	c.estimate += n
	c.sinceScan += n
	if c.estimate <= c.maxBytes && c.sinceScan < c.maxBytes/16 {
		return nil
	}
	_, err := c.pruneLocked(c.maxBytes)
	return err
}

// chunkLock is a held per-chunk flock.
type chunkLock struct {
	f    *os.File
	path string
}

// lock takes chunk d's lock (DIR/.../<hex>.lock), waiting until
// deadline; ok is false when the deadline or ctx came first. The lock
// file is removed by whoever holds the lock once the chunk is in place
// (release with done), so a waiter may find it locked the inode of a
// removed file: it then starts over on the path's current file.
func (c *Cache) lock(ctx context.Context, d Digest, deadline time.Time) (l *chunkLock, ok bool, err error) {
	p := c.path(d) + ".lock"
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, false, fmt.Errorf("lock cached chunk %s: %w", d, err)
	}
	l, ok, err = lockPath(ctx, p, deadline)
	if err != nil {
		return nil, false, fmt.Errorf("lock cached chunk %s: %w", d, err)
	}
	return l, ok, nil
}

// lockPath flocks the file at p (making it), waiting until deadline; ok
// is false when the deadline came first. A file removed by whoever held
// it (a chunk's lock file, a span file pruned) is started over on the
// path's current file.
func lockPath(ctx context.Context, p string, deadline time.Time) (l *chunkLock, ok bool, err error) {
	wait := time.Millisecond
	for {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, false, err
		}
		for {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err != unix.EWOULDBLOCK {
				break
			}
			if !time.Now().Before(deadline) {
				f.Close()
				return nil, false, nil
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, false, ctx.Err()
			case <-time.After(wait):
			}
			wait = min(2*wait, 50*time.Millisecond)
		}
		if err != nil {
			f.Close()
			return nil, false, err
		}
		if sameFile(f, p) {
			return &chunkLock{f: f, path: p}, true, nil
		}
		f.Close() // locked a file its holder removed: start over
	}
}

// release unlocks; with remove, first removes the lock file (the chunk
// is in place, or given up on: nobody needs to wait on this file).
func (l *chunkLock) release(remove bool) {
	if remove {
		os.Remove(l.path)
	}
	unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
}

// tryLockFile takes the flock of the lock file at p without waiting.
func tryLockFile(p string) (*chunkLock, bool) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, false
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil || !sameFile(f, p) {
		f.Close()
		return nil, false
	}
	return &chunkLock{f: f, path: p}, true
}

func sameFile(f *os.File, p string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(p)
	return err == nil && os.SameFile(a, b)
}

// Entry is one cached chunk, or one span file of a blob's pages.
type Entry struct {
	// Digest is the chunk's, or for a span file the blob's.
	Digest Digest
	// Pages marks a span file: pages of blob Digest from byte Offset
	// (SpanBytes of them, those that were read).
	Pages  bool
	Offset int64
	Size   int64     // bytes held (a span file's allocated bytes)
	Used   time.Time // last use (modification time)
	path   string
}

// Name is the chunk's digest, or the blob's with "+OFFSET" for a span
// file.
func (e Entry) Name() string {
	if e.Pages {
		return fmt.Sprintf("%s+%d", e.Digest, e.Offset)
	}
	return e.Digest.String()
}

// walk calls fn with each file of dir's two-hex-digit subdirectories
// (where chunks and span files are kept: their names' first two hex
// digits). A dir that is not there holds nothing.
func (c *Cache) walk(dir string, fn func(path, name string, info fs.FileInfo)) error {
	subs, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list chunk cache %s: %w", c.dir, err)
	}
	for _, sub := range subs {
		if !sub.IsDir() || len(sub.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(dir, sub.Name()))
		if err != nil {
			return fmt.Errorf("list chunk cache %s: %w", c.dir, err)
		}
		for _, f := range files {
			info, err := f.Info()
			if err != nil {
				continue // removed meanwhile
			}
			fn(filepath.Join(dir, sub.Name(), f.Name()), f.Name(), info)
		}
	}
	return nil
}

// List returns the cached chunks, least recently used first.
func (c *Cache) List() ([]Entry, error) {
	return c.list()
}

func (c *Cache) list() ([]Entry, error) {
	var out []Entry
	err := c.walk(c.root(), func(path, name string, info fs.FileInfo) {
		var d Digest
		if n, err := hex.Decode(d[:], []byte(name)); err != nil || n != len(d) || len(name) != 2*len(d) {
			return // temporary and lock files, strangers
		}
		out = append(out, Entry{Digest: d, Size: info.Size(), Used: info.ModTime(), path: path})
	})
	if err != nil {
		return nil, err
	}
	if out, err = c.listSpans(out); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Entry) int { return a.Used.Compare(b.Used) })
	return out, nil
}

// PruneResult is what Prune removed and left.
type PruneResult struct {
	Removed      int
	RemovedBytes int64
	Kept         int
	KeptBytes    int64
}

// Prune removes the least recently used chunks until the cache holds at
// most maxBytes, skipping chunks another process is fetching, and
// removes temporary and lock files left by processes that died.
func (c *Cache) Prune(maxBytes int64) (PruneResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pruneLocked(maxBytes)
}

func (c *Cache) pruneLocked(maxBytes int64) (PruneResult, error) {
	entries, err := c.list()
	if err != nil {
		return PruneResult{}, err
	}
	var r PruneResult
	for _, e := range entries {
		r.KeptBytes += e.Size
	}
	r.Kept = len(entries)
	for _, e := range entries {
		if r.KeptBytes <= maxBytes {
			break
		}
		var l *chunkLock
		var ok bool
		if e.Pages {
			l, ok = tryLockSpanFile(e.path)
		} else {
			l, ok = tryLockFile(e.path + ".lock")
		}
		if !ok {
			continue // being fetched or checked right now
		}
		err := os.Remove(e.path)
		l.release(!e.Pages)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return r, fmt.Errorf("prune chunk cache %s: %w", c.dir, err)
		}
		r.Removed++
		r.RemovedBytes += e.Size
		r.Kept--
		r.KeptBytes -= e.Size
	}
	c.removeStale()
	c.scanned, c.estimate, c.sinceScan = true, r.KeptBytes, 0
	return r, nil
}

// removeStale removes temporary files and unheld lock files older than
// staleAfter.
func (c *Cache) removeStale() {
	dirs, _ := os.ReadDir(c.root())
	for _, sub := range dirs {
		files, _ := os.ReadDir(filepath.Join(c.root(), sub.Name()))
		for _, f := range files {
			info, err := f.Info()
			if err != nil || time.Since(info.ModTime()) < staleAfter {
				continue
			}
			p := filepath.Join(c.root(), sub.Name(), f.Name())
			switch {
			case strings.HasSuffix(f.Name(), ".tmp"):
				os.Remove(p)
			case strings.HasSuffix(f.Name(), ".lock"):
				if l, ok := tryLockFile(p); ok {
					l.release(true)
				}
			}
		}
	}
}
