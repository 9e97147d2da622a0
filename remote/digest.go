package remote

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
)

// chunkHasher digests what is written to it as a whole and by chunks.
// With want set (pull), each chunk is compared as soon as it is complete,
// so a changed blob fails at its first bad chunk.
type chunkHasher struct {
	chunkSize int64
	whole     hash.Hash
	chunk     hash.Hash
	inChunk   int64
	n         int64
	chunks    []byte
	want      []byte // expected chunk digests; nil when only computing
	name      string // the blob, for errors
}

func newChunkHasher(chunkSize int64, want []byte, name string) *chunkHasher {
	return &chunkHasher{chunkSize: chunkSize, whole: sha256.New(), chunk: sha256.New(), want: want, name: name}
}

func (h *chunkHasher) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(int64(len(p)), h.chunkSize-h.inChunk)
		h.whole.Write(p[:k])
		h.chunk.Write(p[:k])
		h.inChunk += k
		h.n += k
		written += int(k)
		p = p[k:]
		if h.inChunk == h.chunkSize {
			if err := h.endChunk(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

func (h *chunkHasher) endChunk() error {
	i := int64(len(h.chunks) / sha256.Size)
	h.chunks = h.chunk.Sum(h.chunks)
	h.chunk.Reset()
	h.inChunk = 0
	if h.want == nil {
		return nil
	}
	got := h.chunks[i*sha256.Size:]
	if (i+1)*sha256.Size > int64(len(h.want)) {
		return fmt.Errorf("blob %s: more bytes than the manifest says: %w", h.name, ErrDigestMismatch)
	}
	if want := h.want[i*sha256.Size : (i+1)*sha256.Size]; !bytes.Equal(got, want) {
		return fmt.Errorf("blob %s: chunk %d (bytes %d-%d) has sha256 %x, the manifest says %x: the blob was changed in the store: %w",
			h.name, i, i*h.chunkSize, i*h.chunkSize+h.chunkSize-1, got, want, ErrDigestMismatch)
	}
	return nil
}

// finish digests the last, partial chunk and returns the whole digest.
func (h *chunkHasher) finish() (string, error) {
	if h.inChunk > 0 {
		if err := h.endChunk(); err != nil {
			return "", err
		}
	}
	return "sha256:" + hex.EncodeToString(h.whole.Sum(nil)), nil
}

// digestFile reads the file at path once and returns its digest, size
// and chunk digests.
func digestFile(path string, chunkSize int64) (string, int64, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, nil, err
	}
	defer f.Close()
	h := newChunkHasher(chunkSize, nil, path)
	if _, err := io.Copy(h, f); err != nil {
		return "", 0, nil, fmt.Errorf("digest %q: %w", path, err)
	}
	d, err := h.finish()
	return d, h.n, h.chunks, err
}
