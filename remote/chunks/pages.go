package chunks

import (
	"bytes"
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Page granularity. A PageReader fetches the pages its reads need,
// adjacent misses in one Source fetch, and a sequential run's next
// pages ahead of it.
const (
	// DefaultPageReadAheadBytes is how far ahead of a sequential run of
	// page reads pages are fetched, at most: a run reads ahead a quarter
	// of the pages it has gone through, up to this. Measured on the
	// Debian boot's page trace (docs/remote-work.md, "Page
	// granularity"): 256 KiB ahead fetch 1.15x what the guest read in
	// 4,240 fetches, 1.09x and 9,460 without read-ahead; reading ahead
	// half a run instead of a quarter 1.21x in 2,940.
	DefaultPageReadAheadBytes = 256 << 10
	// DefaultPageParallel bounds a PageReader's Source fetches in
	// flight.
	DefaultPageParallel = 8
	// pageStreamSlack: a read up to this many pages past where a run
	// last read (or has read ahead to) continues it. SQLite reads a
	// sealed layer's leaf page after the overflow pages before it, so
	// a guest's sequential read skips back and forth by a page or two.
	pageStreamSlack = 2
)

// PagedBlob describes a blob verified page by page: a sealed layer
// whose manifest has page digests.
type PagedBlob struct {
	// Name is how errors name the blob; ID is its digest, which keys its
	// pages in the Cache.
	Name     string
	ID       Digest
	Size     int64
	PageSize int64
	// Digests holds the blob's page digests, 32 bytes per page in
	// order, verified as they are read (a Reader of the page-digest
	// blob).
	Digests io.ReaderAt
}

// Validate checks the page size.
func (b PagedBlob) Validate() error {
	if b.PageSize < 512 || b.PageSize > MinChunkSize || b.PageSize&(b.PageSize-1) != 0 {
		return fmt.Errorf("blob %s: page size %d: want a power of two in [512, %d]", b.Name, b.PageSize, MinChunkSize)
	}
	if b.Size < 0 {
		return fmt.Errorf("blob %s: negative size %d", b.Name, b.Size)
	}
	if b.Digests == nil {
		return fmt.Errorf("blob %s: no page digests", b.Name)
	}
	return nil
}

func (b PagedBlob) pageLen(i int64) int64 { return min(b.PageSize, b.Size-i*b.PageSize) }

// PageReader is an io.ReaderAt over one blob, verified page by page:
// the invariants of the package hold with "page" for "chunk". Pages
// come from memory, from the Cache's span files (see Cache), or from
// the Source: the missing pages of a read, adjacent ones in one fetch,
// under the span's lock so that the machine fetches each page once. It
// is safe for concurrent use.
type PageReader struct {
	fetcher
	blob     PagedBlob
	pages    int64
	cache    *Cache
	ahead    int64 // pages of read-ahead
	memBytes int64
	wg       sync.WaitGroup

	mu       sync.Mutex
	mem      map[int64]*list.Element // page -> element of lru (a *memChunk)
	lru      list.List
	memUsed  int64
	inflight map[int64]*call
	streams  [readStreams]pageStream
	tick     uint64
	closed   bool

	reads, readBytes, fetches, fetchedBytes, cacheHits, readAhead atomic.Int64
}

// pageStream is a run of reads moving forward through the pages; mark
// is the last page read ahead for it.
type pageStream struct {
	start, last, mark int64
	used              uint64
}

// pageRun is pages [from, to] of one span, loaded together.
type pageRun struct {
	from, to int64
	calls    []*call
}

// NewPageReader returns a PageReader of blob b from src. Of opts,
// ReadAheadBytes defaults to DefaultPageReadAheadBytes and Parallel to
// DefaultPageParallel.
func NewPageReader(b PagedBlob, src Source, opts Options) (*PageReader, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if opts.MaxWait == 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultPageParallel
	}
	if opts.ReadAheadBytes == 0 {
		opts.ReadAheadBytes = DefaultPageReadAheadBytes
	}
	if opts.MemoryBytes == 0 {
		opts.MemoryBytes = DefaultMemoryBytes
	}
	r := &PageReader{
		blob:     b,
		pages:    ChunkCount(b.Size, b.PageSize),
		cache:    opts.Cache,
		mem:      map[int64]*list.Element{},
		inflight: map[int64]*call{},
	}
	r.fetcher.init(src, opts)
	if opts.ReadAheadBytes > 0 {
		r.ahead = max(1, opts.ReadAheadBytes/b.PageSize)
	}
	r.memBytes = max(opts.MemoryBytes, 2*SpanBytes)
	for i := range r.streams {
		r.streams[i] = pageStream{start: -1, last: -1 - 2*pageStreamSlack, mark: -1 - 2*pageStreamSlack}
	}
	return r, nil
}

// Size is the blob's size.
func (r *PageReader) Size() int64 { return r.blob.Size }

// Stats returns the counters. FetchedChunks counts the Source's fetches
// (each a run of adjacent pages), CacheHits and ReadAhead count pages.
func (r *PageReader) Stats() Stats {
	return Stats{
		Reads:         r.reads.Load(),
		ReadBytes:     r.readBytes.Load(),
		FetchedChunks: r.fetches.Load(),
		FetchedBytes:  r.fetchedBytes.Load(),
		CacheHits:     r.cacheHits.Load(),
		ReadAhead:     r.readAhead.Load(),
		Retries:       r.retries.Load(),
	}
}

// closeGrace is how long Close lets read-ahead in flight finish (and
// reach the Cache: a job's next boot then finds what this one fetched)
// before it stops it.
const closeGrace = 2 * time.Second

// Close stops read-ahead, after letting what is in flight finish for up
// to closeGrace; later reads fail with ErrClosed. It does not close the
// Source or the page digests' reader.
func (r *PageReader) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(closeGrace):
	}
	r.cancel()
	<-done
	return nil
}

// ReadAt follows io.ReaderAt: a read past the end is short, with io.EOF.
func (r *PageReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read blob %s at %d: negative offset", r.blob.Name, off)
	}
	if r.ctx.Err() != nil {
		return 0, fmt.Errorf("read blob %s: %w", r.blob.Name, ErrClosed)
	}
	r.reads.Add(1)
	if off >= r.blob.Size {
		return 0, io.EOF
	}
	want := p[:min(int64(len(p)), r.blob.Size-off)]
	if len(want) == 0 {
		return 0, nil
	}
	first, last := off/r.blob.PageSize, (off+int64(len(want))-1)/r.blob.PageSize
	r.noteRead(first, last)
	pages := make([][]byte, last-first+1)
	calls := make([]*call, len(pages))
	var mine []int64 // pages this read loads
	r.mu.Lock()
	for i := range pages {
		pg := first + int64(i)
		if e := r.mem[pg]; e != nil {
			r.lru.MoveToFront(e)
			pages[i] = e.Value.(*memChunk).data
		} else if c := r.inflight[pg]; c != nil {
			calls[i] = c
		} else {
			calls[i] = r.startLocked(pg)
			mine = append(mine, pg)
		}
	}
	runs := r.runsLocked(mine)
	r.mu.Unlock()
	switch len(runs) {
	case 0:
	case 1:
		r.loadRun(runs[0])
	default:
		var wg sync.WaitGroup
		for _, run := range runs {
			wg.Go(func() { r.loadRun(run) })
		}
		wg.Wait()
	}
	for i, c := range calls {
		if c == nil {
			continue
		}
		<-c.done
		if c.err != nil {
			return 0, c.err // the first: errors are one line
		}
		pages[i] = c.data
	}
	n := 0
	for i, pg := range pages {
		start := int64(0)
		if i == 0 {
			start = off - first*r.blob.PageSize
		}
		n += copy(want[n:], pg[start:])
	}
	r.readBytes.Add(int64(n))
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *PageReader) startLocked(pg int64) *call {
	c := &call{done: make(chan struct{})}
	r.inflight[pg] = c
	return c
}

// runsLocked groups pages (ascending, each with its call in flight)
// into runs of adjacent pages within one span: what one fetch gets.
func (r *PageReader) runsLocked(pages []int64) []pageRun {
	var runs []pageRun
	per := SpanBytes / r.blob.PageSize
	for _, pg := range pages {
		if n := len(runs); n > 0 && runs[n-1].to == pg-1 && (pg%per) != 0 {
			runs[n-1].to = pg
			runs[n-1].calls = append(runs[n-1].calls, r.inflight[pg])
			continue
		}
		runs = append(runs, pageRun{from: pg, to: pg, calls: []*call{r.inflight[pg]}})
	}
	return runs
}

// noteRead follows sequential runs of reads as Reader.noteRead does, by
// pages, and tolerates a skip of pageStreamSlack pages. A run reads
// ahead a quarter of the pages it has gone through (at most r.ahead),
// the next window once it is halfway through the last, so that a run's
// read-ahead is one fetch per window, not one per page.
func (r *PageReader) noteRead(first, last int64) {
	if r.ahead == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tick++
	oldest := 0
	for i := range r.streams {
		s := &r.streams[i]
		if s.start <= first && first <= max(s.last, s.mark)+1+pageStreamSlack {
			s.used = r.tick
			s.last = max(s.last, last)
			s.mark = max(s.mark, s.last)
			if k := min(r.ahead, (s.last-s.start+1)/4); k > 0 && s.mark-s.last <= k/2 {
				to := min(s.last+k, r.pages-1)
				r.readAheadLocked(s.mark+1, to)
				s.mark = to
			}
			return
		}
		if s.used < r.streams[oldest].used {
			oldest = i
		}
	}
	r.streams[oldest] = pageStream{start: first, last: last, mark: last, used: r.tick}
}

// readAheadLocked starts loading pages [from, to] that are neither in
// memory nor on their way.
func (r *PageReader) readAheadLocked(from, to int64) {
	if r.closed {
		return
	}
	var pages []int64
	for pg := from; pg <= to; pg++ {
		if r.mem[pg] == nil && r.inflight[pg] == nil {
			r.startLocked(pg)
			pages = append(pages, pg)
		}
	}
	r.readAhead.Add(int64(len(pages)))
	for _, run := range r.runsLocked(pages) {
		r.wg.Go(func() { r.loadRun(run) })
	}
}

// loadRun loads a run's pages and publishes them to its calls.
func (r *PageReader) loadRun(run pageRun) {
	data, err := r.loadPages(run.from, run.to)
	r.mu.Lock()
	for i := range run.calls {
		pg := run.from + int64(i)
		delete(r.inflight, pg)
		if err == nil {
			r.rememberLocked(pg, data[i])
		}
	}
	r.mu.Unlock()
	for i, c := range run.calls {
		if err != nil {
			c.err = err
		} else {
			c.data = data[i]
		}
		close(c.done)
	}
}

func (r *PageReader) rememberLocked(pg int64, data []byte) {
	if e := r.mem[pg]; e != nil {
		r.lru.MoveToFront(e)
		return
	}
	r.mem[pg] = r.lru.PushFront(&memChunk{index: pg, data: data})
	r.memUsed += int64(len(data))
	for r.memUsed > r.memBytes {
		e := r.lru.Back()
		m := e.Value.(*memChunk)
		r.lru.Remove(e)
		delete(r.mem, m.index)
		r.memUsed -= int64(len(m.data))
	}
}

// digests returns the page digests of pages [from, to], verified by the
// page digests' reader.
func (r *PageReader) digests(from, to int64) ([]Digest, error) {
	b := make([]byte, (to-from+1)*sha256.Size)
	if _, err := r.blob.Digests.ReadAt(b, from*sha256.Size); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: the page digests end before page %d", ErrMismatch, to)
		}
		return nil, fmt.Errorf("read blob %s pages %d-%d: page digests: %w", r.blob.Name, from, to, err)
	}
	return ParseDigests(b)
}

// loadPages gets pages [from, to] (one span's) verified: from the
// Cache's span file where it holds them, the rest from the Source, under
// the span's lock, adjacent misses in one fetch, and stored in the span
// file.
func (r *PageReader) loadPages(from, to int64) ([][]byte, error) {
	start := time.Now()
	want, err := r.digests(from, to)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, to-from+1)
	if r.cache == nil {
		return out, r.fetchMissing(from, want, out, start, nil)
	}
	span := from * r.blob.PageSize / SpanBytes
	if r.readSpan(span, from, want, out, nil) == 0 {
		return out, nil
	}
	// Another process fetching pages of the span holds its lock for at
	// most about maxWait; past that, fetch without it (the pages
	// written are verified bytes either way, and every read of the file
	// verifies them again).
	sf, err := r.cache.lockSpan(r.ctx, r.blob.ID, span, time.Now().Add(r.maxWait+time.Second))
	if err != nil {
		return nil, r.closedOr(from, to, err)
	}
	if sf != nil {
		defer sf.release()
		if r.readSpan(span, from, want, out, sf) == 0 {
			return out, nil
		}
	}
	if err := r.fetchMissing(from, want, out, start, sf); err != nil {
		return nil, err
	}
	return out, nil
}

// readSpan fills the pages of out that are nil from span file sf (nil:
// open it unlocked) where they match their digests, and returns how
// many are still missing.
func (r *PageReader) readSpan(span, from int64, want []Digest, out [][]byte, sf *spanFile) int {
	missing := 0
	for _, b := range out {
		if b == nil {
			missing++
		}
	}
	buf, err := r.cache.readSpan(r.blob.ID, span, sf, (from*r.blob.PageSize)%SpanBytes, int64(len(out))*r.blob.PageSize)
	if err != nil {
		return missing
	}
	hits := 0
	for i := range out {
		if out[i] != nil {
			continue
		}
		n := r.blob.pageLen(from + int64(i))
		o := int64(i) * r.blob.PageSize
		if o+n > int64(len(buf)) {
			break
		}
		if page := buf[o : o+n]; sha256.Sum256(page) == want[i] {
			out[i] = bytes.Clone(page)
			hits++
		}
	}
	if hits > 0 {
		r.cacheHits.Add(int64(hits))
		r.cache.usedSpan(r.blob.ID, span)
	}
	return missing - hits
}

// fetchMissing fetches the pages of out that are nil, each run of
// adjacent ones in one fetch, verifies them and, with sf, stores them
// in the span file.
func (r *PageReader) fetchMissing(from int64, want []Digest, out [][]byte, start time.Time, sf *spanFile) error {
	for i := 0; i < len(out); {
		if out[i] != nil {
			i++
			continue
		}
		j := i
		for j+1 < len(out) && out[j+1] == nil {
			j++
		}
		pages, err := r.fetch(from+int64(i), from+int64(j), want[i:j+1], start)
		if err != nil {
			return err
		}
		copy(out[i:], pages)
		if sf != nil {
			// Verified bytes: a span file that cannot take them only
			// means a later fetch.
			_ = r.cache.writeSpan(sf, ((from+int64(i))*r.blob.PageSize)%SpanBytes, pages)
		}
		i = j + 1
	}
	return nil
}

// fetch gets pages [from, to] from the Source in one fetch
// (fetcher.fetch: retried while the Source fails, for about maxWait) and
// verifies each.
func (r *PageReader) fetch(from, to int64, want []Digest, start time.Time) ([][]byte, error) {
	off := from * r.blob.PageSize
	n := min((to+1)*r.blob.PageSize, r.blob.Size) - off
	b, err := r.fetcher.fetch(off, n, start)
	if err != nil {
		return nil, fmt.Errorf("read blob %s pages %d-%d: %w", r.blob.Name, from, to, err)
	}
	if int64(len(b)) != n {
		return nil, fmt.Errorf("read blob %s pages %d-%d: %d bytes for %d: %w", r.blob.Name, from, to, len(b), n, ErrMismatch)
	}
	pages := make([][]byte, to-from+1)
	for i := range pages {
		o := int64(i) * r.blob.PageSize
		// A copy each: memory holds pages, not whole fetches.
		pages[i] = bytes.Clone(b[o : o+r.blob.pageLen(from+int64(i))])
		if sha256.Sum256(pages[i]) != want[i] {
			pg := from + int64(i)
			return nil, fmt.Errorf("read blob %s page %d (bytes %d-%d): %w: the blob was changed or damaged in the store; push the layer again", r.blob.Name, pg, pg*r.blob.PageSize, pg*r.blob.PageSize+int64(len(pages[i]))-1, ErrMismatch)
		}
	}
	r.fetches.Add(1)
	r.fetchedBytes.Add(n)
	return pages, nil
}

// closedOr is ErrClosed once the PageReader is closed, else err, naming
// pages [from, to].
func (r *PageReader) closedOr(from, to int64, err error) error {
	return fmt.Errorf("read blob %s pages %d-%d: %w", r.blob.Name, from, to, r.fetcher.closedOr(err))
}

// ParseDigest parses "sha256:<64 hex digits>".
func ParseDigest(s string) (Digest, error) {
	var d Digest
	h, ok := strings.CutPrefix(s, "sha256:")
	if n, err := hex.Decode(d[:], []byte(h)); !ok || err != nil || n != len(d) || len(h) != 2*len(d) {
		return Digest{}, fmt.Errorf("digest %q is not sha256:<64 hex digits>", s)
	}
	return d, nil
}
