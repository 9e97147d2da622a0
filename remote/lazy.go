package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/remote/chunks"
)

// Lazy remote bases: a diff layer whose parent is a pushed chain, read
// in place from the store a chunk at a time (create -b s3://...).

func init() {
	diffdisk.RegisterParentFormat(disklayer.FormatS3, diffdisk.ParentFormat{Attach: attachLazy, Open: openLazyParent})
}

// endpointPrefix starts what an s3 parent reference records in its Stat
// field: the endpoint create was given (--endpoint), "" for the SDK's.
const endpointPrefix = "endpoint="

// fetchTimeout bounds one ranged GET, so that a store that accepts a
// request and never answers it counts as failing (and is retried, then
// EIO) rather than holding a read forever.
const fetchTimeout = 30 * time.Second

// LazyOptions configure OpenLazy.
type LazyOptions struct {
	// Cache is the chunk cache; nil opens the machine's
	// (chunks.DefaultDir), where manifests are kept too.
	Cache *chunks.Cache
	// MaxWait is how long a store that fails is retried, at open and
	// by reads, before they fail (chunks.DefaultMaxWait when 0; none
	// when negative).
	MaxWait time.Duration
	// Strict opens each layer in strict mode (it reads the whole layer).
	Strict bool
	// Chunks tunes the readers (its Cache and MaxWait are set from the
	// fields above).
	Chunks chunks.Options
}

// LazyChain is a pushed chain opened in place: each layer a read-only
// sqlitelayer.File over a chunks.Reader of its blob.
type LazyChain struct {
	URL      URL // pinned: s3://BUCKET/PREFIX@sha256:<manifest>
	Manifest *Manifest
	// Layers are top first (the manifest's order reversed); Names name
	// them (the blob's s3:// URL).
	Layers  []*sqlitelayer.File
	Names   []string
	readers []statser // of the layers, and of their page digests
	gets    *atomic.Int64
}

// statser is a chunks.Reader or chunks.PageReader.
type statser interface{ Stats() chunks.Stats }

// Counters sums what the chain's readers did.
func (c *LazyChain) Counters() diffdisk.StoreCounters {
	var out diffdisk.StoreCounters
	for _, r := range c.readers {
		st := r.Stats()
		out.Reads += st.Reads
		out.ReadBytes += st.ReadBytes
		out.FetchedChunks += st.FetchedChunks
		out.FetchedBytes += st.FetchedBytes
		out.CacheHits += st.CacheHits
		out.Retries += st.Retries
	}
	out.GETs = c.gets.Load()
	return out
}

// Close closes every layer (and its reader).
func (c *LazyChain) Close() error {
	var errs []error
	for _, l := range c.Layers {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// storeParent is the chain as diffdisk composes it.
func (c *LazyChain) storeParent() *diffdisk.StoreParent {
	sp := &diffdisk.StoreParent{URL: c.URL.String(), Names: c.Names, Counters: c.Counters}
	for _, l := range c.Layers {
		sp.Layers = append(sp.Layers, l)
	}
	return sp
}

// OpenLazy opens the chain of the manifest with the given digest in s,
// lazily: the manifest comes from the cache directory when it is there
// (verified by its digest), else from the store (and is kept); each
// layer's blob is HEADed once for its ETag, which every ranged GET is
// pinned to (If-Match: a blob changed or removed since fails with
// chunks.ErrGone, never mixes in other bytes), and every chunk is
// verified against the manifest before SQLite sees it. The layers'
// identities are checked against the manifest: uuid and generation of
// each, and each child's recorded parent digest against its parent's.
func OpenLazy(ctx context.Context, s *Store, digest string, opts LazyOptions) (*LazyChain, error) {
	c, err := openLazy(ctx, s, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("open %s@%s lazily: %w", s.url, digest, err)
	}
	return c, nil
}

func openLazy(ctx context.Context, s *Store, digest string, opts LazyOptions) (_ *LazyChain, err error) {
	if opts.Cache == nil {
		dir, err := chunks.DefaultDir()
		if err != nil {
			return nil, err
		}
		if opts.Cache, err = chunks.OpenCache(dir, 0); err != nil {
			return nil, err
		}
	}
	wait := opts.MaxWait
	switch {
	case wait == 0:
		wait = chunks.DefaultMaxWait
	case wait < 0:
		wait = time.Nanosecond // one try
	}
	m, err := cachedManifest(ctx, s, opts.Cache.Dir(), digest, wait)
	if err != nil {
		return nil, err
	}
	u := s.url
	u.Digest = digest
	c := &LazyChain{URL: u, Manifest: m, gets: new(atomic.Int64)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	ropts := opts.Chunks
	ropts.Cache, ropts.MaxWait = opts.Cache, wait
	for i := len(m.Layers) - 1; i >= 0; i-- {
		ml := m.Layers[i]
		f, rs, err := openLazyLayer(ctx, s, m, ml, ropts, opts.Strict, c.gets)
		if err != nil {
			return nil, err
		}
		c.Layers = append(c.Layers, f)
		c.readers = append(c.readers, rs...)
		c.Names = append(c.Names, s.blobURL(ml.Digest))
	}
	if err := verifyLazyChain(c); err != nil {
		return nil, err
	}
	return c, nil
}

// openLazyLayer opens one layer of m over a reader of its blob: by
// pages when the manifest has its page digests, else by chunks. It
// returns the readers whose counters count.
func openLazyLayer(ctx context.Context, s *Store, m *Manifest, ml ManifestLayer, ropts chunks.Options, strict bool, gets *atomic.Int64) (*sqlitelayer.File, []statser, error) {
	src, err := openBlobSource(ctx, s, ml.Digest, ml.Size, ropts.MaxWait, gets)
	if err != nil {
		return nil, nil, err
	}
	if ml.Pages != nil {
		return openLazyPages(ctx, s, ml, src, ropts, strict, gets)
	}
	digests, err := chunks.ParseDigests(ml.Chunks)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: %w: %w", ml.Digest, err, ErrBadManifest)
	}
	r, err := chunks.NewReader(chunks.Blob{Name: ml.Digest, Size: ml.Size, ChunkSize: m.ChunkSize, Chunks: digests}, src, ropts)
	if err != nil {
		return nil, nil, err
	}
	f, err := sqlitelayer.OpenReaderAt(s.blobURL(ml.Digest), r, sqlitelayer.ReaderAtOptions{Strict: strict, Closer: r})
	if err != nil {
		return nil, nil, err
	}
	return f, []statser{r}, nil
}

// openLazyPages opens a layer over a chunks.PageReader of its blob,
// whose page digests come from a chunks.Reader of the page-digest blob
// (no read-ahead: a read needs the digests of its own pages).
func openLazyPages(ctx context.Context, s *Store, ml ManifestLayer, src chunks.Source, ropts chunks.Options, strict bool, gets *atomic.Int64) (*sqlitelayer.File, []statser, error) {
	pd := ml.Pages
	pdigests, err := chunks.ParseDigests(pd.Chunks)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: page digests: %w: %w", ml.Digest, err, ErrBadManifest)
	}
	id, err := chunks.ParseDigest(ml.Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: %w: %w", ml.Digest, err, ErrBadManifest)
	}
	psrc, err := openBlobSource(ctx, s, pd.Digest, pd.Size, ropts.MaxWait, gets)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: page digests: %w", ml.Digest, err)
	}
	dopts := ropts
	dopts.ReadAheadBytes = -1
	dr, err := chunks.NewReader(chunks.Blob{Name: pd.Digest, Size: pd.Size, ChunkSize: pd.ChunkSize, Chunks: pdigests}, psrc, dopts)
	if err != nil {
		return nil, nil, err
	}
	popts := ropts
	popts.ReadAheadBytes, popts.Parallel = 0, 0 // the page defaults
	r, err := chunks.NewPageReader(chunks.PagedBlob{Name: ml.Digest, ID: id, Size: ml.Size, PageSize: ml.PageSize, Digests: dr}, src, popts)
	if err != nil {
		dr.Close()
		return nil, nil, err
	}
	f, err := sqlitelayer.OpenReaderAt(s.blobURL(ml.Digest), r, sqlitelayer.ReaderAtOptions{Strict: strict, Closer: closers{r, dr}})
	if err != nil {
		return nil, nil, err
	}
	return f, []statser{r, dr}, nil
}

// closers closes each in order.
type closers []io.Closer

func (cs closers) Close() error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// openBlobSource HEADs the blob with digest d (retrying for maxWait)
// for the ETag its ranged GETs are pinned to, and checks its size.
func openBlobSource(ctx context.Context, s *Store, d string, size int64, maxWait time.Duration, gets *atomic.Int64) (*blobSource, error) {
	var info BlobInfo
	err := retryStore(ctx, maxWait, func() (err error) {
		info, err = s.StatBlob(ctx, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	if info.Size != size {
		return nil, fmt.Errorf("blob %s in %s has %d bytes, the manifest says %d: it was changed in the store (push the chain again): %w", d, s.url, info.Size, size, ErrDigestMismatch)
	}
	return &blobSource{s: s, digest: d, etag: info.ETag, gets: gets}, nil
}

// verifyLazyChain checks the opened layers against the manifest and
// each other.
func verifyLazyChain(c *LazyChain) error {
	n := len(c.Layers)
	for i, f := range c.Layers {
		want := c.Manifest.Layers[n-1-i]
		info := f.Info()
		bad := func(format string, args ...any) error {
			return fmt.Errorf("layer %s (%s) of manifest %s: %s: %w", want.Digest, want.Path, c.URL.Digest, fmt.Sprintf(format, args...), ErrBadManifest)
		}
		switch {
		case info.UUID != want.UUID || info.Generation != want.Generation:
			return bad("it is %s at generation %d, the manifest says %s at %d", info.UUID, info.Generation, want.UUID, want.Generation)
		case !info.Sealed:
			return bad("it is not sealed")
		case i == n-1 && info.Parent != nil:
			return bad("the manifest's base has a parent (%s %s)", info.Parent.Format, info.Parent.Path)
		case i < n-1:
			below := c.Manifest.Layers[n-2-i]
			p := info.Parent
			if p == nil || p.Format != disklayer.FormatHibdisk || p.UUID != below.UUID || p.SHA256 != below.Digest {
				return bad("its parent reference does not name the layer below it in the manifest (%s, %s)", below.UUID, below.Digest)
			}
		}
	}
	return nil
}

// blobURL names the blob with digest d as an s3:// URL.
func (s *Store) blobURL(d string) string { return Scheme + s.url.Bucket + "/" + s.BlobKey(d) }

// blobSource is the chunks.Source of one blob: ranged GETs pinned to
// the ETag the blob had when it was opened.
type blobSource struct {
	s            *Store
	digest, etag string
	gets         *atomic.Int64
}

// Fetch does one ranged GET. A blob that is gone or is not the object
// the source was pinned to (404, 412) wraps chunks.ErrGone: not retried.
func (b *blobSource) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	p := make([]byte, n)
	b.gets.Add(1)
	if _, err := b.s.ReadBlobAt(ctx, b.digest, b.etag, p, off); err != nil {
		if errors.Is(err, ErrBlobChanged) || errors.Is(err, ErrMissingBlob) {
			return nil, fmt.Errorf("%w (%w)", err, chunks.ErrGone)
		}
		return nil, err
	}
	return p, nil
}

// permanent reports whether a store error will not go away by waiting.
func permanent(err error) bool {
	for _, e := range []error{ErrBadURL, ErrNoCredentials, ErrAccessDenied, ErrNoBucket, ErrNoTag, ErrMissingBlob, ErrDigestMismatch, ErrBlobChanged, ErrBadManifest, context.Canceled} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// retryStore runs fn until it succeeds, fails for good, or has failed
// for maxWait, backing off as the chunk reader does.
func retryStore(ctx context.Context, maxWait time.Duration, fn func() error) error {
	start := time.Now()
	backoff := 50 * time.Millisecond
	for {
		err := fn()
		if err == nil || permanent(err) {
			return err
		}
		waited := time.Since(start)
		if waited >= maxWait {
			if maxWait > time.Millisecond {
				return fmt.Errorf("%w (the store failed for %v)", err, waited.Round(time.Millisecond))
			}
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(min(backoff+rand.N(backoff/4+1), maxWait-waited)):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// manifestPath is where the cache directory keeps the manifest with
// digest d.
func manifestPath(cacheDir, d string) string {
	return filepath.Join(cacheDir, "manifests", "sha256", strings.TrimPrefix(d, "sha256:"))
}

// cachedManifest returns the manifest with digest d from the cache
// directory, verified, or from the store, keeping it there.
func cachedManifest(ctx context.Context, s *Store, cacheDir, d string, maxWait time.Duration) (*Manifest, error) {
	p := manifestPath(cacheDir, d)
	if b, err := os.ReadFile(p); err == nil {
		if m, err := DecodeManifest(b, d); err == nil {
			now := time.Now()
			os.Chtimes(p, now, now) // used: pruned last
			return m, nil
		}
		os.Remove(p) // torn or damaged: fetch it again
	}
	var b []byte
	err := retryStore(ctx, maxWait, func() (err error) {
		b, err = s.manifestBytes(ctx, d)
		return err
	})
	if err != nil {
		return nil, err
	}
	m, err := DecodeManifest(b, d)
	if err != nil {
		return nil, err
	}
	// Verified: keep it (a manifest the directory cannot take is
	// fetched again next time).
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
		if tmp, err := os.CreateTemp(filepath.Dir(p), ".manifest-*"); err == nil {
			_, werr := tmp.Write(b)
			if cerr := tmp.Close(); werr == nil && cerr == nil {
				os.Rename(tmp.Name(), p)
			}
			os.Remove(tmp.Name())
		}
	}
	return m, nil
}

// attachLazy is create -b s3://BUCKET/PREFIX[:TAG]: it resolves the tag
// to its manifest, opens the chain (so a child is never made over one
// that does not open), and returns the reference the child records,
// pinned to the manifest.
func attachLazy(backing string, opts diffdisk.AttachOptions) (disklayer.ParentRef, *diffdisk.StoreParent, error) {
	u, err := ParseURL(backing)
	if err != nil {
		return disklayer.ParentRef{}, nil, err
	}
	ctx := context.Background()
	s, err := Open(ctx, u, Options{Endpoint: opts.Endpoint, MaxAttempts: 1})
	if err != nil {
		return disklayer.ParentRef{}, nil, err
	}
	digest, err := s.Resolve(ctx, u)
	if err != nil {
		return disklayer.ParentRef{}, nil, err
	}
	c, err := OpenLazy(ctx, s, digest, LazyOptions{})
	if err != nil {
		return disklayer.ParentRef{}, nil, err
	}
	top := c.Manifest.Top()
	ref := disklayer.ParentRef{
		Path: c.URL.String(), Format: disklayer.FormatS3,
		UUID: top.UUID, Generation: top.Generation, SHA256: top.Digest,
		Size: c.Layers[0].Info().DiskSize,
	}
	if opts.Endpoint != "" {
		ref.Stat = endpointPrefix + opts.Endpoint
	}
	return ref, c.storeParent(), nil
}

// openLazyParent opens the parent chain a child recorded as ref.
func openLazyParent(ref disklayer.ParentRef, opts diffdisk.ParentOptions) (*diffdisk.StoreParent, error) {
	u, err := ParseURL(ref.Path)
	if err != nil {
		return nil, err
	}
	if u.Digest == "" {
		return nil, fmt.Errorf("s3 parent %q is not pinned to a manifest (@sha256:...): %w", ref.Path, ErrBadURL)
	}
	wait := opts.MaxWait
	if wait == 0 {
		wait = -1 // diffdisk's 0: fail at once
	}
	ctx := context.Background()
	var s *Store
	err = retryStore(ctx, max(wait, 0), func() (err error) {
		s, err = Open(ctx, u, Options{Endpoint: strings.TrimPrefix(ref.Stat, endpointPrefix), MaxAttempts: 1})
		return err
	})
	if err != nil {
		return nil, err
	}
	c, err := OpenLazy(ctx, s, u.Digest, LazyOptions{MaxWait: wait, Strict: opts.Strict})
	if err != nil {
		return nil, err
	}
	top := c.Manifest.Top()
	info := c.Layers[0].Info()
	switch {
	case top.Digest != ref.SHA256:
		err = fmt.Errorf("manifest %s's top layer is %s, this layer was made over %s: %w", u.Digest, top.Digest, ref.SHA256, disklayer.ErrParentMismatch)
	case info.UUID != ref.UUID || info.Generation != ref.Generation:
		err = fmt.Errorf("layer %s at generation %d recorded, the manifest's top is %s at %d: %w", ref.UUID, ref.Generation, info.UUID, info.Generation, disklayer.ErrParentMismatch)
	case info.DiskSize != ref.Size:
		err = fmt.Errorf("size %d recorded, the manifest's top has %d: %w", ref.Size, info.DiskSize, disklayer.ErrParentMismatch)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c.storeParent(), nil
}
