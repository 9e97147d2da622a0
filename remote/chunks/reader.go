package chunks

import (
	"container/list"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	// DefaultMaxWait is how long a failing Source is retried before
	// reads fail with ErrUnavailable: diffdisk.DefaultReconnectDelay, what
	// reads of a lost NBD parent wait.
	DefaultMaxWait = 30 * time.Second
	// DefaultParallel bounds the Source fetches in flight per Reader:
	// at least this many, and as many as DefaultInFlightBytes of chunks.
	DefaultParallel = 4
	// DefaultInFlightBytes: small chunks get more fetches in flight, so
	// that a sequential read's rate (chunks in flight x chunk size / the
	// store's latency) does not fall with the chunk size.
	DefaultInFlightBytes = 1 << 20
	// DefaultReadAheadBytes is how far ahead of a sequential run of
	// reads chunks are fetched (at least one chunk).
	DefaultReadAheadBytes = 2 << 20
	// DefaultMemoryBytes is how many bytes of verified chunks a Reader
	// keeps in memory (at least what its fetches and read-ahead need).
	DefaultMemoryBytes = 32 << 20
)

// Retry back-off: the first wait, doubled after each failure up to the
// cap, each with up to a quarter added at random so that many readers
// do not retry in step.
const (
	firstBackoff = 50 * time.Millisecond
	maxBackoff   = 5 * time.Second
)

// readStreams is how many sequential runs of reads a Reader follows at
// once (several NBD connections, or a guest reading two files).
const readStreams = 4

// Options tune a Reader. The zero value gives the defaults and no Cache.
type Options struct {
	// Cache is the machine's chunk cache; nil keeps chunks in memory
	// only.
	Cache *Cache
	// MaxWait is how long a failing Source is retried (DefaultMaxWait
	// when 0).
	MaxWait time.Duration
	// Parallel bounds the Source fetches in flight (when 0,
	// DefaultParallel or DefaultInFlightBytes of chunks, whichever is
	// more).
	Parallel int
	// ReadAheadBytes is how far ahead of a sequential run to fetch
	// (DefaultReadAheadBytes when 0, none when negative).
	ReadAheadBytes int64
	// MemoryBytes bounds the verified chunks kept in memory
	// (DefaultMemoryBytes when 0).
	MemoryBytes int64
}

// Stats count a Reader's work since it was made.
type Stats struct {
	Reads     int64 // ReadAt calls
	ReadBytes int64 // bytes they returned
	// FetchedChunks and FetchedBytes came from the Source (and were
	// verified); CacheHits chunks came from the Cache directory.
	FetchedChunks int64
	FetchedBytes  int64
	CacheHits     int64
	// ReadAhead counts chunks loaded ahead of a sequential run.
	ReadAhead int64
	// Retries counts failed Source fetches that were retried.
	Retries int64
}

// Reader is an io.ReaderAt over one blob, verified chunk by chunk (see
// the package documentation). It is safe for concurrent use.
type Reader struct {
	fetcher
	blob     Blob
	cache    *Cache
	ahead    int64 // chunks of read-ahead
	memBytes int64
	wg       sync.WaitGroup

	mu       sync.Mutex
	mem      map[int64]*list.Element // chunk -> element of lru (a *memChunk)
	lru      list.List               // front: most recently used
	memUsed  int64
	inflight map[int64]*call
	streams  [readStreams]stream
	tick     uint64
	closed   bool // Close was called: no more read-ahead

	reads, readBytes, fetchedChunks, fetchedBytes, cacheHits, readAhead atomic.Int64
}

type memChunk struct {
	index int64
	data  []byte
}

// call is one chunk being loaded; its waiters block on done.
type call struct {
	done chan struct{}
	data []byte
	err  error
}

// stream is a run of reads moving forward through the chunks.
type stream struct {
	start int64 // first chunk of the run
	last  int64 // last chunk the run read
	used  uint64
}

// NewReader returns a Reader of blob b from src.
func NewReader(b Blob, src Source, opts Options) (*Reader, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	if opts.MaxWait == 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.Parallel <= 0 {
		opts.Parallel = max(DefaultParallel, int(DefaultInFlightBytes/b.ChunkSize))
	}
	if opts.ReadAheadBytes == 0 {
		opts.ReadAheadBytes = DefaultReadAheadBytes
	}
	if opts.MemoryBytes == 0 {
		opts.MemoryBytes = DefaultMemoryBytes
	}
	r := &Reader{
		blob:     b,
		cache:    opts.Cache,
		mem:      map[int64]*list.Element{},
		inflight: map[int64]*call{},
	}
	r.fetcher.init(src, opts)
	if opts.ReadAheadBytes > 0 {
		r.ahead = max(1, opts.ReadAheadBytes/b.ChunkSize)
	}
	// Room for every chunk a read, its fetches and its read-ahead hold.
	r.memBytes = max(opts.MemoryBytes, (int64(opts.Parallel)+r.ahead+2)*b.ChunkSize)
	for i := range r.streams {
		r.streams[i] = stream{start: -2, last: -2}
	}
	return r, nil
}

// Size is the blob's size.
func (r *Reader) Size() int64 { return r.blob.Size }

// Stats returns the counters.
func (r *Reader) Stats() Stats {
	return Stats{
		Reads:         r.reads.Load(),
		ReadBytes:     r.readBytes.Load(),
		FetchedChunks: r.fetchedChunks.Load(),
		FetchedBytes:  r.fetchedBytes.Load(),
		CacheHits:     r.cacheHits.Load(),
		ReadAhead:     r.readAhead.Load(),
		Retries:       r.retries.Load(),
	}
}

// Close stops read-ahead and fetches in flight; later reads fail with
// ErrClosed. It does not close the Source.
func (r *Reader) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	return nil
}

// ReadAt follows io.ReaderAt: a read past the end is short, with io.EOF.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
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
	first, last := off/r.blob.ChunkSize, (off+int64(len(want))-1)/r.blob.ChunkSize
	r.noteRead(first, last)
	chunks := make([][]byte, last-first+1)
	errs := make([]error, len(chunks))
	if len(chunks) == 1 {
		chunks[0], errs[0] = r.chunk(first)
	} else {
		var wg sync.WaitGroup
		for i := range chunks {
			wg.Go(func() { chunks[i], errs[i] = r.chunk(first + int64(i)) })
		}
		wg.Wait()
	}
	for _, err := range errs {
		if err != nil {
			return 0, err // the first: errors are one line
		}
	}
	n := 0
	for i, c := range chunks {
		start := int64(0)
		if i == 0 {
			start = off - first*r.blob.ChunkSize
		}
		n += copy(want[n:], c[start:])
	}
	r.readBytes.Add(int64(n))
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// noteRead follows sequential runs: a read that starts in the chunk
// after the one a run last read continues it; a read within the run's
// last chunk keeps it alive; any other read starts a run in place of
// the one used least recently. A run that continues fetches the chunks
// after this read's last, as many as a quarter of the chunks it has
// gone through (at most r.ahead): a guest reading a file of a few
// chunks gets none (the bytes fetched stay close to the bytes read), a
// long sequential read soon gets the whole window (the Source's latency
// stays off its path), and at most a quarter of a run is fetched for
// nothing when it stops.
func (r *Reader) noteRead(first, last int64) {
	if r.ahead == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tick++
	oldest := 0
	for i := range r.streams {
		s := &r.streams[i]
		switch first {
		case s.last + 1:
			s.last, s.used = last, r.tick
			if n := min(r.ahead, (last-s.start+1)/4); n > 0 {
				r.readAheadLocked(last+1, min(last+n, ChunkCount(r.blob.Size, r.blob.ChunkSize)-1))
			}
			return
		case s.last:
			s.last, s.used = last, r.tick
			return
		}
		if s.used < r.streams[oldest].used {
			oldest = i
		}
	}
	r.streams[oldest] = stream{start: first, last: last, used: r.tick}
}

// readAheadLocked starts loading chunks [from, to] that are neither in
// memory nor on their way.
func (r *Reader) readAheadLocked(from, to int64) {
	if r.closed {
		return
	}
	for i := from; i <= to; i++ {
		if r.mem[i] != nil || r.inflight[i] != nil {
			continue
		}
		c := r.startLocked(i)
		r.readAhead.Add(1)
		r.wg.Go(func() { r.load(i, c) })
	}
}

// chunk returns chunk i's verified bytes: from memory, from a load in
// flight, or loaded now.
func (r *Reader) chunk(i int64) ([]byte, error) {
	r.mu.Lock()
	if e := r.mem[i]; e != nil {
		r.lru.MoveToFront(e)
		r.mu.Unlock()
		return e.Value.(*memChunk).data, nil
	}
	c := r.inflight[i]
	if c == nil {
		c = r.startLocked(i)
		r.mu.Unlock()
		r.load(i, c)
	} else {
		r.mu.Unlock()
		<-c.done
	}
	return c.data, c.err
}

func (r *Reader) startLocked(i int64) *call {
	c := &call{done: make(chan struct{})}
	r.inflight[i] = c
	return c
}

// load loads chunk i for c and publishes the result.
func (r *Reader) load(i int64, c *call) {
	c.data, c.err = r.loadChunk(i)
	r.mu.Lock()
	delete(r.inflight, i)
	if c.err == nil {
		r.rememberLocked(i, c.data)
	}
	r.mu.Unlock()
	close(c.done)
}

// rememberLocked keeps a verified chunk in memory, dropping the least
// recently used beyond the bound.
func (r *Reader) rememberLocked(i int64, data []byte) {
	r.mem[i] = r.lru.PushFront(&memChunk{index: i, data: data})
	r.memUsed += int64(len(data))
	for r.memUsed > r.memBytes {
		e := r.lru.Back()
		m := e.Value.(*memChunk)
		r.lru.Remove(e)
		delete(r.mem, m.index)
		r.memUsed -= int64(len(m.data))
	}
}

// loadChunk gets chunk i from the cache directory or, under the chunk's
// lock (so that one process of the machine fetches it), from the Source.
func (r *Reader) loadChunk(i int64) ([]byte, error) {
	start := time.Now()
	d := r.blob.Chunks[i]
	if r.cache == nil {
		return r.fetch(i, start)
	}
	if b, ok, err := r.cache.get(d); err != nil || ok {
		if ok {
			r.cacheHits.Add(1)
		}
		return b, err
	}
	// Another process fetching the chunk holds its lock for at most
	// about maxWait; past that, fetch without it (the rename keeps the
	// file whole either way).
	l, locked, err := r.cache.lock(r.ctx, d, time.Now().Add(r.maxWait+time.Second))
	if err != nil {
		return nil, r.closedOr(i, err)
	}
	if locked {
		defer func() { l.release(true) }()
		if b, ok, err := r.cache.get(d); err != nil || ok {
			if ok {
				r.cacheHits.Add(1)
			}
			return b, err
		}
	}
	b, err := r.fetch(i, start)
	if err != nil {
		return nil, err
	}
	// The bytes are verified: a chunk the directory cannot take is
	// still good to use.
	_ = r.cache.put(d, b)
	return b, nil
}

// fetch gets chunk i from the Source (fetcher.fetch: retried while the
// Source fails, for about maxWait) and verifies it.
func (r *Reader) fetch(i int64, start time.Time) ([]byte, error) {
	off, n := i*r.blob.ChunkSize, r.blob.chunkLen(i)
	b, err := r.fetcher.fetch(off, n, start)
	if err != nil {
		return nil, fmt.Errorf("read blob %s chunk %d: %w", r.blob.Name, i, err)
	}
	if int64(len(b)) != n || sha256.Sum256(b) != r.blob.Chunks[i] {
		return nil, fmt.Errorf("read blob %s chunk %d (bytes %d-%d): %w: the blob was changed or damaged in the store; push the layer again", r.blob.Name, i, off, off+n-1, ErrMismatch)
	}
	r.fetchedChunks.Add(1)
	r.fetchedBytes.Add(n)
	return b, nil
}

// closedOr is ErrClosed once the Reader is closed, else err, naming
// chunk i.
func (r *Reader) closedOr(i int64, err error) error {
	return fmt.Errorf("read blob %s chunk %d: %w", r.blob.Name, i, r.fetcher.closedOr(err))
}
