package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// DefaultRegion is the region when neither the environment nor a profile
// names one (S3-compatible stores ignore it, but SigV4 needs one).
const DefaultRegion = "us-east-1"

// Multipart: blobs larger than MultipartThreshold go up in parts of
// PartSize, PartsInFlight at a time.
const (
	MultipartThreshold = 64 << 20
	PartSize           = 64 << 20
	PartsInFlight      = 3
)

// Options configure Open.
type Options struct {
	// Endpoint overrides the SDK's (AWS_ENDPOINT_URL_S3, profiles): the
	// URL of an S3-compatible server. Requests then use path-style
	// addressing (http://HOST/BUCKET/KEY).
	Endpoint string
	// MaxAttempts bounds the SDK's attempts of each request (0: the
	// SDK's default, 3). Lazy reads set 1: the chunk reader retries
	// them itself, within its bounded wait.
	MaxAttempts int
}

// Store is one s3://BUCKET/PREFIX: its blobs and tags.
type Store struct {
	url    URL // tag and digest cleared
	client *s3.Client
	stats  storeStats
	// hook, when set (tests), is told of each step a push completes:
	// "part" (a multipart part), "blob" (a blob stored or found),
	// "manifest", "tag" (just before the tag is swapped).
	hook func(event string)
}

func (s *Store) event(e string) {
	if s.hook != nil {
		s.hook(e)
	}
}

type storeStats struct {
	blobsUploaded, bytesUploaded, blobsPresent, bytesDownloaded atomic.Int64
}

// Stats counts what a Store did since Open.
type Stats struct {
	BlobsUploaded   int64 // blobs written (layer files and manifests)
	BytesUploaded   int64
	BlobsPresent    int64 // blobs found already there (HEAD or a 412)
	BytesDownloaded int64
}

// Stats returns the counters.
func (s *Store) Stats() Stats {
	return Stats{
		BlobsUploaded:   s.stats.blobsUploaded.Load(),
		BytesUploaded:   s.stats.bytesUploaded.Load(),
		BlobsPresent:    s.stats.blobsPresent.Load(),
		BytesDownloaded: s.stats.bytesDownloaded.Load(),
	}
}

// URL is the store's s3://BUCKET/PREFIX.
func (s *Store) URL() URL { return s.url }

// Open connects to the store of u (its tag and digest are ignored):
// credentials, region and endpoint come from the SDK's usual places
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_REGION,
// AWS_ENDPOINT_URL_S3, ~/.aws), opts.Endpoint overriding the endpoint.
// It checks the credentials and that the bucket exists, so a missing
// bucket or credentials are one clear error before anything is read or
// written.
func Open(ctx context.Context, u URL, opts Options) (*Store, error) {
	u.Tag, u.Digest = "", ""
	// The SDK's own log lines (an IMDS fallback warning, say) would break
	// the CLI's one-line errors: what matters comes back as errors.
	cfg, err := config.LoadDefaultConfig(ctx, config.WithLogger(logging.Nop{}))
	if err != nil {
		return nil, fmt.Errorf("open %s: load AWS configuration: %w", u, err)
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	if cfg.Credentials == nil {
		return nil, &CredentialsError{URL: u.String(), Detail: "the SDK has no credential provider"}
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = cfg.Credentials.Retrieve(cctx)
	cancel()
	if err != nil {
		return nil, &CredentialsError{URL: u.String(), Detail: firstLine(err)}
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		if o.BaseEndpoint != nil {
			o.UsePathStyle = true
		}
		if opts.MaxAttempts > 0 {
			o.RetryMaxAttempts = opts.MaxAttempts
		}
		// S3-compatible servers reject or lack the newer checksums.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	s := &Store{url: u, client: client}
	if _, err := client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(u.Bucket)}); err != nil {
		if httpStatus(err) == http.StatusNotFound {
			return nil, fmt.Errorf("open %s: bucket %q does not exist at %s (create it, or check the URL and --endpoint): %w", u, u.Bucket, s.endpoint(), ErrNoBucket)
		}
		return nil, fmt.Errorf("open %s: %w", u, s.mapError(err))
	}
	return s, nil
}

// endpoint names the server requests go to, for messages.
func (s *Store) endpoint() string {
	if e := s.client.Options().BaseEndpoint; e != nil {
		return *e
	}
	return "AWS S3 (" + s.client.Options().Region + ")"
}

func firstLine(err error) string {
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return msg
}

// mapError adds the package's sentinel to the errors a caller can act on.
func (s *Store) mapError(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchBucket":
			return fmt.Errorf("bucket %q: %w", s.url.Bucket, ErrNoBucket)
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden":
			return fmt.Errorf("%s: %w (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the profile)", ae.ErrorCode(), ErrAccessDenied)
		}
	}
	if httpStatus(err) == http.StatusForbidden {
		return fmt.Errorf("%w (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the profile): %v", ErrAccessDenied, firstLine(err))
	}
	return err
}

// httpStatus is the HTTP status of a failed request, or 0.
func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func isNotFound(err error) bool {
	var ae smithy.APIError
	if errors.As(err, &ae) && (ae.ErrorCode() == "NoSuchKey" || ae.ErrorCode() == "NotFound") {
		return true
	}
	return httpStatus(err) == http.StatusNotFound && !isNoBucket(err)
}

func isNoBucket(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "NoSuchBucket"
}

func isPreconditionFailed(err error) bool {
	return httpStatus(err) == http.StatusPreconditionFailed
}

// BlobKey is the object key of the blob with digest d.
func (s *Store) BlobKey(d string) string {
	return s.url.key("blobs/sha256/" + strings.TrimPrefix(d, "sha256:"))
}

func (s *Store) tagKey(tag string) string { return s.url.key("refs/" + tag) }

// BlobInfo is what a HEAD says of a blob.
type BlobInfo struct {
	Size int64
	ETag string
}

// StatBlob returns the size and ETag of the blob with digest d, or an
// error wrapping ErrMissingBlob.
func (s *Store) StatBlob(ctx context.Context, d string) (BlobInfo, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.url.Bucket), Key: aws.String(s.BlobKey(d))})
	if err != nil {
		if isNotFound(err) {
			return BlobInfo{}, fmt.Errorf("blob %s not in %s: %w", d, s.url, ErrMissingBlob)
		}
		return BlobInfo{}, fmt.Errorf("stat blob %s in %s: %w", d, s.url, s.mapError(err))
	}
	return BlobInfo{Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag)}, nil
}

// putBlob uploads size bytes of r (readable again from the start for
// each part: an io.ReaderAt) as the blob with digest d unless it is there
// already, and reports whether it uploaded it. A single-part upload is
// signed with d itself as its payload hash, each part of a multipart
// upload with its entry of parts (fileDigests): the server refuses bytes
// that are not those.
func (s *Store) putBlob(ctx context.Context, d string, r io.ReaderAt, size int64, parts []string) (bool, error) {
	if info, err := s.StatBlob(ctx, d); err == nil {
		if info.Size != size {
			return false, fmt.Errorf("blob %s in %s has %d bytes, the layer %d: the store holds other bytes under its digest: %w", d, s.url, info.Size, size, ErrDigestMismatch)
		}
		s.stats.blobsPresent.Add(1)
		s.event("blob")
		return false, nil
	} else if !errors.Is(err, ErrMissingBlob) {
		return false, err
	}
	var err error
	if size > MultipartThreshold {
		if want := int((size + PartSize - 1) / PartSize); len(parts) != want {
			return false, fmt.Errorf("upload blob %s: %d part digests for %d parts", d, len(parts), want)
		}
		err = s.putMultipart(ctx, d, r, size, parts)
	} else {
		_, err = s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(s.url.Bucket), Key: aws.String(s.BlobKey(d)),
			Body: io.NewSectionReader(r, 0, size), ContentLength: aws.Int64(size),
			IfNoneMatch: aws.String("*"),
		}, signedWith(strings.TrimPrefix(d, "sha256:")))
	}
	if isPreconditionFailed(err) {
		// Another push put it there meanwhile: the same bytes, by digest.
		s.stats.blobsPresent.Add(1)
		s.event("blob")
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("upload blob %s to %s: %w", d, s.url, s.mapError(err))
	}
	s.stats.blobsUploaded.Add(1)
	s.stats.bytesUploaded.Add(size)
	s.event("blob")
	return true, nil
}

// signedWith signs a request's payload with a SHA-256 the caller
// computed (hex) instead of reading the body once more for it: SigV4's
// X-Amz-Content-Sha256, which the server checks the body against.
func signedWith(payloadSHA256 string) func(*s3.Options) {
	return func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, func(stack *middleware.Stack) error {
			return stack.Finalize.Insert(middleware.FinalizeMiddlewareFunc("hibdiskPayloadHash",
				func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
					return next.HandleFinalize(v4.SetPayloadHash(ctx, payloadSHA256), in)
				}), "ComputePayloadHash", middleware.Before)
		})
	}
}

// putMultipart uploads a large blob in parts, a few at a time, and
// completes it with If-None-Match: *; a failure aborts the upload, which
// leaves nothing in the store.
func (s *Store) putMultipart(ctx context.Context, d string, r io.ReaderAt, size int64, partSHA256 []string) (err error) {
	bucket, key := aws.String(s.url.Bucket), aws.String(s.BlobKey(d))
	created, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: bucket, Key: key})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// With a fresh context: ctx may be why it failed.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: bucket, Key: key, UploadId: created.UploadId})
		}
	}()
	n := int((size + PartSize - 1) / PartSize)
	parts := make([]types.CompletedPart, n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	sem := make(chan struct{}, PartsInFlight)
	for i := range n {
		off := int64(i) * PartSize
		length := min(PartSize, size-off)
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
				Bucket: bucket, Key: key, UploadId: created.UploadId,
				PartNumber: aws.Int32(int32(i + 1)), Body: io.NewSectionReader(r, off, length), ContentLength: aws.Int64(length),
			}, signedWith(partSHA256[i]))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("part %d of %d: %w", i+1, n, err)
				}
				cancel()
				return
			}
			parts[i] = types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(int32(i + 1))}
			s.event("part")
		}()
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		return firstErr
	}
	_, err = s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: bucket, Key: key, UploadId: created.UploadId, IfNoneMatch: aws.String("*"),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	return err
}

// getBlob opens the blob with digest d for reading.
func (s *Store) getBlob(ctx context.Context, d string) (io.ReadCloser, int64, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.url.Bucket), Key: aws.String(s.BlobKey(d))})
	if err != nil {
		if isNotFound(err) {
			return nil, 0, fmt.Errorf("blob %s not in %s (the store lost it, or a push was cut short: push the layer again): %w", d, s.url, ErrMissingBlob)
		}
		return nil, 0, fmt.Errorf("read blob %s from %s: %w", d, s.url, s.mapError(err))
	}
	return &countingReader{r: out.Body, n: &s.stats.bytesDownloaded}, aws.ToInt64(out.ContentLength), nil
}

// ReadBlobAt reads len(p) bytes of the blob with digest d at off with one
// ranged GET, pinned with If-Match to the object whose ETag the caller
// read (StatBlob): a blob replaced since is ErrBlobChanged, never other
// bytes. The bytes are not verified: the caller checks them against the
// manifest's chunk digests before use.
func (s *Store) ReadBlobAt(ctx context.Context, d, etag string, p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.url.Bucket), Key: aws.String(s.BlobKey(d)),
		Range:   aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1)),
		IfMatch: aws.String(etag),
	})
	switch {
	case isPreconditionFailed(err):
		return 0, fmt.Errorf("read blob %s from %s: ETag is no longer %s: %w", d, s.url, etag, ErrBlobChanged)
	case err != nil && isNotFound(err):
		return 0, fmt.Errorf("read blob %s from %s: %w", d, s.url, ErrMissingBlob)
	case err != nil:
		return 0, fmt.Errorf("read blob %s from %s: %w", d, s.url, s.mapError(err))
	}
	defer out.Body.Close()
	n, err := io.ReadFull(out.Body, p)
	s.stats.bytesDownloaded.Add(int64(n))
	if err != nil {
		return n, fmt.Errorf("read blob %s from %s at %d: %w", d, s.url, off, err)
	}
	return n, nil
}

// Manifest reads, verifies and parses the manifest with digest d.
func (s *Store) Manifest(ctx context.Context, d string) (*Manifest, error) {
	b, err := s.manifestBytes(ctx, d)
	if err != nil {
		return nil, err
	}
	return DecodeManifest(b, d)
}

// manifestBytes reads the bytes of the manifest with digest d, not
// verified.
func (s *Store) manifestBytes(ctx context.Context, d string) ([]byte, error) {
	body, size, err := s.getBlob(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	defer body.Close()
	const maxManifest = 64 << 20
	if size > maxManifest {
		return nil, fmt.Errorf("manifest %s in %s: %d bytes, more than a manifest has: %w", d, s.url, size, ErrBadManifest)
	}
	b, err := io.ReadAll(io.LimitReader(body, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest %s from %s: %w", d, s.url, err)
	}
	return b, nil
}

// TagRef is what a tag names, and the ETag that a compare-and-swap of it
// must match.
type TagRef struct {
	Manifest string // "sha256:<hex>"
	ETag     string
}

// Tag reads the tag; a missing one wraps ErrNoTag.
func (s *Store) Tag(ctx context.Context, tag string) (TagRef, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.url.Bucket), Key: aws.String(s.tagKey(tag))})
	if err != nil {
		if isNotFound(err) {
			return TagRef{}, fmt.Errorf("no tag %q in %s (hibdisk ls-remote %s lists the tags): %w", tag, s.url, s.url, ErrNoTag)
		}
		return TagRef{}, fmt.Errorf("read tag %q of %s: %w", tag, s.url, s.mapError(err))
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, 1024))
	if err != nil {
		return TagRef{}, fmt.Errorf("read tag %q of %s: %w", tag, s.url, err)
	}
	d := strings.TrimSpace(string(b))
	if !validDigest(d) {
		return TagRef{}, fmt.Errorf("tag %q of %s holds %q, not sha256:<hex>: %w", tag, s.url, b, ErrBadManifest)
	}
	return TagRef{Manifest: d, ETag: aws.ToString(out.ETag)}, nil
}

// SetTag points tag at the manifest with digest d if it still is as prev
// says (prev.ETag "" means the tag must not exist): a compare-and-swap
// with If-Match, or If-None-Match: * for a new tag. A lost race is a
// *TagMovedError (ErrTagMoved).
func (s *Store) SetTag(ctx context.Context, tag, d string, prev TagRef) error {
	in := &s3.PutObjectInput{
		Bucket: aws.String(s.url.Bucket), Key: aws.String(s.tagKey(tag)),
		Body: bytes.NewReader([]byte(d + "\n")), ContentType: aws.String("text/plain"),
	}
	if prev.ETag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(prev.ETag)
	}
	_, err := s.client.PutObject(ctx, in)
	if err == nil {
		return nil
	}
	// 412, or (If-Match on a tag deleted meanwhile) 404.
	if isPreconditionFailed(err) || prev.ETag != "" && isNotFound(err) {
		moved := &TagMovedError{URL: s.url.String(), Tag: tag}
		if now, err := s.Tag(ctx, tag); err == nil {
			moved.Now = now.Manifest
		}
		return moved
	}
	return fmt.Errorf("set tag %q of %s: %w", tag, s.url, s.mapError(err))
}

// Tags lists the tags under the prefix, sorted.
func (s *Store) Tags(ctx context.Context) ([]string, error) {
	prefix := s.tagKey("")
	var tags []string
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.url.Bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list tags of %s: %w", s.url, s.mapError(err))
		}
		for _, o := range page.Contents {
			tag := strings.TrimPrefix(aws.ToString(o.Key), prefix)
			if tagPattern.MatchString(tag) {
				tags = append(tags, tag)
			}
		}
	}
	return tags, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }
