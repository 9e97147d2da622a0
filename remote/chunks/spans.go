package chunks

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SpanBytes is how much of a blob one span file of the Cache covers. A
// PageReader's pages are kept in span files,
// DIR/pages/sha256/<2 hex>/<64 hex of the blob>.<span>, sparse, each
// page at its offset in the span. A span file's lock is a flock of the
// file itself, held while pages of the span are fetched and written, so
// that the machine fetches each page once. What is written there was
// verified, and every read verifies it again against the page's digest
// (a hole reads as zeros, a write torn by a power loss as other bytes:
// both are misses), so span files, like chunk files, are never fsynced.
const SpanBytes = 1 << 20

func (c *Cache) pagesRoot() string { return filepath.Join(c.dir, "pages", "sha256") }

func (c *Cache) spanPath(id Digest, span int64) string {
	h := hex.EncodeToString(id[:])
	return filepath.Join(c.pagesRoot(), h[:2], h+"."+strconv.FormatInt(span, 10))
}

// spanFile is a span file held under its flock.
type spanFile struct{ l *chunkLock }

func (s *spanFile) release() { s.l.release(false) }

// lockSpan opens (making it) and locks the span file, waiting until
// deadline; nil when the deadline came first.
func (c *Cache) lockSpan(ctx context.Context, id Digest, span int64, deadline time.Time) (*spanFile, error) {
	p := c.spanPath(id, span)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("lock cached pages %s: %w", p, err)
	}
	l, ok, err := lockPath(ctx, p, deadline)
	if err != nil {
		return nil, fmt.Errorf("lock cached pages %s: %w", p, err)
	}
	if !ok {
		return nil, nil
	}
	return &spanFile{l: l}, nil
}

// readSpan reads n bytes at off of a span file: sf's, or the file
// opened for the read (a missing file reads nothing). Short at the
// file's end.
func (c *Cache) readSpan(id Digest, span int64, sf *spanFile, off, n int64) ([]byte, error) {
	f := (*os.File)(nil)
	if sf != nil {
		f = sf.l.f
	} else {
		var err error
		if f, err = os.Open(c.spanPath(id, span)); err != nil {
			return nil, err
		}
		defer f.Close()
	}
	b := make([]byte, n)
	got, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:got], nil
}

// writeSpan writes verified pages at off of the locked span file.
func (c *Cache) writeSpan(sf *spanFile, off int64, pages [][]byte) error {
	var n int64
	for _, p := range pages {
		if _, err := sf.l.f.WriteAt(p, off+n); err != nil {
			return fmt.Errorf("cache pages %s: %w", sf.l.path, err)
		}
		n += int64(len(p))
	}
	return c.added(n)
}

// usedSpan marks a span file used (LRU order; a failure only ages it).
func (c *Cache) usedSpan(id Digest, span int64) {
	now := time.Now()
	_ = os.Chtimes(c.spanPath(id, span), now, now)
}

// listSpans appends the span files to out, sized by the bytes they hold
// (allocated blocks: they are sparse).
func (c *Cache) listSpans(out []Entry) ([]Entry, error) {
	err := c.walk(c.pagesRoot(), func(path, name string, info fs.FileInfo) {
		h, num, ok := strings.Cut(name, ".")
		var d Digest
		span, serr := strconv.ParseInt(num, 10, 64)
		if n, err := hex.Decode(d[:], []byte(h)); !ok || serr != nil || span < 0 || err != nil || n != len(d) || len(h) != 2*len(d) {
			return // strangers
		}
		size := info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			size = min(size, st.Blocks*512)
		}
		out = append(out, Entry{Digest: d, Pages: true, Offset: span * SpanBytes, Size: size, Used: info.ModTime(), path: path})
	})
	return out, err
}

// tryLockSpanFile takes the flock of an existing span file without
// waiting.
func tryLockSpanFile(p string) (*chunkLock, bool) {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		return nil, false
	}
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil || !sameFile(f, p) {
		f.Close()
		return nil, false
	}
	return &chunkLock{f: f, path: p}, true
}
