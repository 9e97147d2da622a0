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

	// With partSize set (push of a multipart blob), the SHA-256 of each
	// part too, which each part's upload is signed with.
	partSize int64
	part     hash.Hash
	inPart   int64
	parts    []string

	// With pageSize set (push), the SHA-256 of each page too: the
	// layer's page digests, which lazy reads verify pages by.
	pageSize int64
	page     hash.Hash
	inPage   int64
	pages    []byte
}

func newChunkHasher(chunkSize int64, want []byte, name string) *chunkHasher {
	return &chunkHasher{chunkSize: chunkSize, whole: sha256.New(), chunk: sha256.New(), want: want, name: name}
}

func (h *chunkHasher) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(int64(len(p)), h.chunkSize-h.inChunk)
		if h.pageSize > 0 {
			k = min(k, h.pageSize-h.inPage)
		}
		h.whole.Write(p[:k])
		h.chunk.Write(p[:k])
		if h.partSize > 0 {
			h.writePart(p[:k])
		}
		if h.pageSize > 0 {
			h.writePage(p[:k])
		}
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

// writePart feeds the part hashes; p never straddles a chunk, and a
// chunk never straddles a part (PartSize is a multiple of every chunk
// size up to it).
func (h *chunkHasher) writePart(p []byte) {
	h.part.Write(p)
	h.inPart += int64(len(p))
	if h.inPart == h.partSize {
		h.parts = append(h.parts, hex.EncodeToString(h.part.Sum(nil)))
		h.part.Reset()
		h.inPart = 0
	}
}

// writePage feeds the page hashes; p never straddles a page.
func (h *chunkHasher) writePage(p []byte) {
	h.page.Write(p)
	h.inPage += int64(len(p))
	if h.inPage == h.pageSize {
		h.pages = h.page.Sum(h.pages)
		h.page.Reset()
		h.inPage = 0
	}
}

// finish digests the last, partial chunk and returns the whole digest.
func (h *chunkHasher) finish() (string, error) {
	if h.pageSize > 0 && h.inPage > 0 {
		h.pages = h.page.Sum(h.pages)
	}
	if h.inChunk > 0 {
		if err := h.endChunk(); err != nil {
			return "", err
		}
	}
	if h.partSize > 0 && h.inPart > 0 {
		h.parts = append(h.parts, hex.EncodeToString(h.part.Sum(nil)))
	}
	return "sha256:" + hex.EncodeToString(h.whole.Sum(nil)), nil
}

// fileDigests is what push needs of a layer file, from one read: its
// digest (a blob's key, and the SigV4 payload hash of a single-part
// upload), the manifest's chunk digests, and, for a blob above
// MultipartThreshold, the SHA-256 of each part its upload is signed
// with. The server checks each upload against the hash it is signed
// with, so the bytes stored under a digest are the bytes digested, even
// if the file changes in between.
type fileDigests struct {
	digest string
	size   int64
	chunks []byte
	parts  []string // hex; nil for a single-part upload
	// pageSize and pages: the SQLite page size from the file's header
	// and the SHA-256 of each page (nil when not asked for).
	pageSize int64
	pages    []byte
}

// digestFile reads the file at path once and returns its digests, with
// page digests when pages is set.
func digestFile(path string, chunkSize int64, pages bool) (fileDigests, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileDigests{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fileDigests{}, err
	}
	h := newChunkHasher(chunkSize, nil, path)
	if pages {
		ps, err := sqlitePageSize(f)
		if err != nil {
			return fileDigests{}, fmt.Errorf("digest %q: %w", path, err)
		}
		if chunkSize%ps != 0 {
			return fileDigests{}, fmt.Errorf("digest %q: chunk size %d is not a multiple of its page size %d", path, chunkSize, ps)
		}
		h.pageSize, h.page = ps, sha256.New()
	}
	if st.Size() > MultipartThreshold {
		if PartSize%chunkSize != 0 {
			return fileDigests{}, fmt.Errorf("chunk size %d does not divide the part size %d", chunkSize, PartSize)
		}
		h.partSize, h.part = PartSize, sha256.New()
	}
	if _, err := io.Copy(h, f); err != nil {
		return fileDigests{}, fmt.Errorf("digest %q: %w", path, err)
	}
	d, err := h.finish()
	if err != nil {
		return fileDigests{}, err
	}
	if (h.n > MultipartThreshold) != (h.parts != nil) {
		return fileDigests{}, fmt.Errorf("digest %q: the file changed size while it was read", path)
	}
	return fileDigests{digest: d, size: h.n, chunks: h.chunks, parts: h.parts, pageSize: h.pageSize, pages: h.pages}, nil
}

// sqlitePageSize reads the page size from the SQLite header at the
// start of f (bytes 16-17, big-endian; 1 means 65536).
func sqlitePageSize(f io.ReaderAt) (int64, error) {
	var b [18]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return 0, fmt.Errorf("read the SQLite header: %w", err)
	}
	ps := int64(b[16])<<8 | int64(b[17])
	if ps == 1 {
		ps = 65536
	}
	if ps < 512 || ps > 65536 || ps&(ps-1) != 0 {
		return 0, fmt.Errorf("SQLite header gives page size %d: not an SQLite file", ps)
	}
	return ps, nil
}

// bytesDigests digests a blob held in memory (a layer's page digests)
// as digestFile does a file.
func bytesDigests(b []byte, chunkSize int64) (fileDigests, error) {
	h := newChunkHasher(chunkSize, nil, "page digests")
	if int64(len(b)) > MultipartThreshold {
		if PartSize%chunkSize != 0 {
			return fileDigests{}, fmt.Errorf("chunk size %d does not divide the part size %d", chunkSize, PartSize)
		}
		h.partSize, h.part = PartSize, sha256.New()
	}
	h.Write(b)
	d, err := h.finish()
	if err != nil {
		return fileDigests{}, err
	}
	return fileDigests{digest: d, size: h.n, chunks: h.chunks, parts: h.parts}, nil
}
