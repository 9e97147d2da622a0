package rawlayer

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// DigestPrefix names the digest format. The sampling layout below is part
// of the format: digests are stored in diff layers, so changing the layout
// needs a new prefix, or every layer over a raw base would be refused.
const DigestPrefix = "sha256-sampled:"

// The sampling layout: the first and last digestEdge bytes, and
// digestSamples windows of digestWindow bytes spread evenly between them.
// A file no larger than their sum is hashed whole.
const (
	digestEdge    = 1 << 20
	digestWindow  = 64 << 10
	digestSamples = 62
	digestWhole   = 2*digestEdge + digestSamples*digestWindow
)

// Digest returns the digest of the raw image at path; see DigestReaderAt.
func Digest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("digest raw image: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("digest raw image %q: %w", path, err)
	}
	sum, err := DigestReaderAt(f, size)
	if err != nil {
		return "", fmt.Errorf("digest raw image %q: %w", path, err)
	}
	return sum, nil
}

// DigestReaderAt returns "sha256-sampled:<hex>", a SHA-256 over the size
// and sampled content of the size bytes of r: the first and last MiB and
// 62 windows of 64 KiB evenly spaced between them (about 6 MiB read,
// whatever the size; files up to that are hashed whole). Each sample is
// hashed with its offset and length. The digest is stable across runs and
// machines and does not depend on timestamps, names or sparseness.
//
// It is meant to notice that a raw base changed under the diff layers
// created over it. It catches: any change of size (a resize, a truncated
// copy), any change in the first or last MiB (partition tables, the GPT
// backup header, filesystem superblocks, boot sectors), a different image
// put in its place, and any change of a file small enough to be hashed
// whole. It can miss changes confined to the unsampled middle of a large
// file, such as a few blocks rewritten by a guest that booted from the
// base read-write: a matching digest is evidence, not proof, that the base
// is unchanged.
func DigestReaderAt(r io.ReaderAt, size int64) (string, error) {
	if size < 0 {
		return "", fmt.Errorf("digest of %d bytes: negative size", size)
	}
	h := sha256.New()
	var header [16]byte
	binary.BigEndian.PutUint64(header[:8], uint64(size))
	h.Write(header[:8])
	buf := make([]byte, digestEdge)
	for _, s := range sampleSpans(size) {
		binary.BigEndian.PutUint64(header[:8], uint64(s.off))
		binary.BigEndian.PutUint64(header[8:], uint64(s.len))
		h.Write(header[:])
		for done := int64(0); done < s.len; {
			chunk := buf[:min(int64(len(buf)), s.len-done)]
			if _, err := io.ReadFull(io.NewSectionReader(r, s.off+done, int64(len(chunk))), chunk); err != nil {
				return "", fmt.Errorf("digest: read %d bytes at %d: %w", len(chunk), s.off+done, err)
			}
			h.Write(chunk)
			done += int64(len(chunk))
		}
	}
	return DigestPrefix + hex.EncodeToString(h.Sum(nil)), nil
}

// span is one sampled range.
type span struct{ off, len int64 }

// sampleSpans lists the ranges the digest reads, in order.
func sampleSpans(size int64) []span {
	if size <= digestWhole {
		return []span{{0, size}}
	}
	spans := []span{{0, digestEdge}}
	// Windows from just after the first edge to just before the last,
	// the first and last window touching the edges.
	// (last-first)*i/(n-1), split so that it cannot overflow.
	first, last := int64(digestEdge), size-digestEdge-digestWindow
	q, r := (last-first)/(digestSamples-1), (last-first)%(digestSamples-1)
	for i := range int64(digestSamples) {
		spans = append(spans, span{first + q*i + r*i/(digestSamples-1), digestWindow})
	}
	return append(spans, span{size - digestEdge, digestEdge})
}
