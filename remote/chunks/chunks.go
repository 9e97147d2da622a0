package chunks

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"syscall"
)

// Chunk size limits. A chunk size is a power of two in
// [SmallestChunkSize, MaxChunkSize]. A layer's chunks are at least
// MinChunkSize, a multiple of every SQLite page size, so no page of a
// layer straddles two chunks (remote's manifests check it); a
// page-digest blob's chunks are smaller (remote.PageDigestChunkSize).
const (
	SmallestChunkSize = 4 << 10
	MinChunkSize      = 64 << 10
	MaxChunkSize      = 64 << 20
)

// Errors a Reader returns, wrapped with the blob and the chunk. Each
// wraps syscall.EIO: what a guest reading through NBD is told.
var (
	// ErrMismatch: a chunk's or a page's bytes do not match its digest (the blob was
	// changed or damaged in the store). Not retried; nothing is cached.
	ErrMismatch error = &eioError{"does not match its digest"}
	// ErrGone: the Source reports that the blob is missing or is not the
	// object the Reader was pinned to (a 404, or a 412 on If-Match).
	// Sources wrap it; it is not retried.
	ErrGone error = &eioError{"blob is missing or changed in the store"}
	// ErrUnavailable: the Source failed for longer than Options.MaxWait.
	ErrUnavailable error = &eioError{"store unavailable"}
	// ErrClosed: the Reader was closed.
	ErrClosed = errors.New("chunk reader closed")
)

type eioError struct{ msg string }

func (e *eioError) Error() string { return e.msg }
func (e *eioError) Unwrap() error { return syscall.EIO }

// Digest is the SHA-256 of a chunk.
type Digest [sha256.Size]byte

// String is "sha256:" and the digest in hex.
func (d Digest) String() string { return "sha256:" + hex.EncodeToString(d[:]) }

// ParseDigests splits the concatenated 32-byte digests of a manifest's
// chunks field (already base64-decoded).
func ParseDigests(b []byte) ([]Digest, error) {
	if len(b)%sha256.Size != 0 {
		return nil, fmt.Errorf("chunk digests: %d bytes is not a multiple of %d", len(b), sha256.Size)
	}
	out := make([]Digest, len(b)/sha256.Size)
	for i := range out {
		copy(out[i][:], b[i*sha256.Size:])
	}
	return out, nil
}

// Blob describes one blob as its manifest does.
type Blob struct {
	// Name is how errors name the blob: its digest, "sha256:<hex>".
	Name      string
	Size      int64
	ChunkSize int64
	// Chunks holds the digest of each chunk, in order: ceil(Size /
	// ChunkSize) of them; the last chunk may be short.
	Chunks []Digest
}

// Validate checks the chunk size and the number of digests.
func (b Blob) Validate() error {
	if b.ChunkSize < SmallestChunkSize || b.ChunkSize > MaxChunkSize || b.ChunkSize&(b.ChunkSize-1) != 0 {
		return fmt.Errorf("blob %s: chunk size %d: want a power of two in [%d, %d]", b.Name, b.ChunkSize, SmallestChunkSize, MaxChunkSize)
	}
	if b.Size < 0 {
		return fmt.Errorf("blob %s: negative size %d", b.Name, b.Size)
	}
	if want := ChunkCount(b.Size, b.ChunkSize); int64(len(b.Chunks)) != want {
		return fmt.Errorf("blob %s: %d chunk digests for %d bytes in chunks of %d: want %d", b.Name, len(b.Chunks), b.Size, b.ChunkSize, want)
	}
	return nil
}

// chunkLen is the length of chunk i.
func (b Blob) chunkLen(i int64) int64 { return min(b.ChunkSize, b.Size-i*b.ChunkSize) }

// ChunkCount is how many chunks of chunkSize bytes hold size bytes.
func ChunkCount(size, chunkSize int64) int64 { return (size + chunkSize - 1) / chunkSize }

// HashChunks reads r to its end and returns the digest of each
// chunkSize-byte chunk of it and its length: what a manifest records.
func HashChunks(r io.Reader, chunkSize int64) ([]Digest, int64, error) {
	var out []Digest
	var size int64
	buf := make([]byte, chunkSize)
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			out = append(out, sha256.Sum256(buf[:n]))
			size += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return out, size, nil
		}
		if err != nil {
			return nil, 0, err
		}
	}
}
