package rawlayer

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/hibdisk/hibdisk/disklayer"
)

// ContentPrefix names the whole-content digest format (ContentDigest).
// Like DigestPrefix it is stored in diff layers: changing the format needs
// a new prefix.
const ContentPrefix = "sha256-content:"

// contentChunk is the unit of the content digest: each chunk that is not
// all zeros is hashed with its index.
const contentChunk = 64 << 10

// Identity is what a child records about a raw parent when it is attached.
type Identity struct {
	Size   int64
	Digest string // sampled digest (Digest): checked at every open, cheap
	SHA256 string // whole-content digest (ContentDigest)
	Stat   string // file identity (FileStat) when SHA256 was computed
}

// Identify computes the identity of the raw image at path. It reads the
// whole file once (holes are skipped), and refuses a file that changed
// while it was read.
func Identify(path string) (Identity, error) {
	before, err := FileStat(path)
	if err != nil {
		return Identity{}, err
	}
	sum, size, err := ContentDigest(path)
	if err != nil {
		return Identity{}, err
	}
	digest, err := Digest(path)
	if err != nil {
		return Identity{}, err
	}
	after, err := FileStat(path)
	if err != nil {
		return Identity{}, err
	}
	if after != before {
		return Identity{}, fmt.Errorf("identify raw image %q: it changed while it was read (%s, then %s); stop whoever writes it and retry", path, before, after)
	}
	return Identity{Size: size, Digest: digest, SHA256: sum, Stat: before}, nil
}

// FileStat returns the file's identity as the kernel keeps it: inode,
// size, modification and change times in nanoseconds. Any write to the
// file changes the times, so an equal FileStat means unchanged content
// (short of someone setting the clock back and the times with it); a
// copy or a move gives a different one, which says nothing about the
// content (ContentDigest does).
func FileStat(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("stat raw image: %w", err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("stat raw image %q: no inode information on this system", path)
	}
	return fmt.Sprintf("ino=%d size=%d mtime=%d.%09d ctime=%d.%09d", sys.Ino, sys.Size,
		sys.Mtim.Sec, sys.Mtim.Nsec, sys.Ctim.Sec, sys.Ctim.Nsec), nil
}

// ContentDigest returns "sha256-content:<hex>" and the size of the raw
// image at path: a SHA-256 over the size and, for every 64 KiB chunk that
// is not all zeros, its index and bytes. It depends on the content alone:
// a sparse copy, a fully allocated copy and the original agree. It reads
// the allocated part of the file once (holes are skipped with SEEK_DATA),
// so it costs one sequential read of the data the base holds.
func ContentDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, fmt.Errorf("content digest of raw image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, fmt.Errorf("content digest of raw image %q: %w", path, err)
	}
	size := st.Size()
	h := sha256.New()
	var word [8]byte
	binary.BigEndian.PutUint64(word[:], uint64(size))
	h.Write(word[:])

	const bufChunks = 64 // 4 MiB reads
	buf := make([]byte, bufChunks*contentChunk)
	zero := make([]byte, contentChunk)
	for off := int64(0); off < size; {
		data, end, err := dataRun(f, off)
		if err != nil {
			return "", 0, fmt.Errorf("content digest of raw image %q: %w", path, err)
		}
		if data >= size {
			break
		}
		// From the start of the chunk holding data to the next hole.
		off, end = data-data%contentChunk, min(end, size)
		for off < end {
			n := min(int64(len(buf)), end-off)
			// Whole chunks, except at the end of the file.
			if rem := n % contentChunk; rem != 0 && off+n < size {
				n += contentChunk - rem
				n = min(n, size-off)
			}
			p := buf[:n]
			if _, err := f.ReadAt(p, off); err != nil && !(errors.Is(err, io.EOF) && off+n >= size) {
				return "", 0, fmt.Errorf("content digest of raw image %q: read %d bytes at %d: %w", path, n, off, err)
			}
			for c := int64(0); c < n; c += contentChunk {
				chunk := p[c:min(c+contentChunk, n)]
				if bytes.Equal(chunk, zero[:len(chunk)]) {
					continue
				}
				binary.BigEndian.PutUint64(word[:], uint64((off+c)/contentChunk))
				h.Write(word[:])
				h.Write(chunk)
			}
			off += n
		}
	}
	return ContentPrefix + hex.EncodeToString(h.Sum(nil)), size, nil
}

// ViewDigest is ContentDigest of a layer's guest view rather than a
// file's bytes: the same format, so an image in any format and the raw
// image it came from agree. It reads the layer's Data extents once, in
// whole 64 KiB chunks.
func ViewDigest(l disklayer.Layer) (string, error) {
	size := l.Size()
	h := sha256.New()
	var word [8]byte
	binary.BigEndian.PutUint64(word[:], uint64(size))
	h.Write(word[:])
	zero := make([]byte, contentChunk)
	// The next piece is read while this one is hashed: over NBD (an
	// image qemu-nbd reads) reading and hashing one after the other
	// left each side idle half the time.
	pieces, free, done := make(chan viewPiece, 1), make(chan []byte, 2), make(chan struct{})
	defer close(done)
	for range 2 {
		free <- make([]byte, 64*contentChunk)
	}
	go readView(l, pieces, free, done)
	for pc := range pieces {
		if pc.err != nil {
			return "", pc.err
		}
		for c := 0; c < len(pc.p); c += contentChunk {
			chunk := pc.p[c:min(c+contentChunk, len(pc.p))]
			if bytes.Equal(chunk, zero[:len(chunk)]) {
				continue
			}
			binary.BigEndian.PutUint64(word[:], uint64((pc.off+int64(c))/contentChunk))
			h.Write(word[:])
			h.Write(chunk)
		}
		free <- pc.p
	}
	return ContentPrefix + hex.EncodeToString(h.Sum(nil)), nil
}

// viewPiece is a read of ViewDigest: whole chunks at off, or the error
// that ends the reading.
type viewPiece struct {
	p   []byte
	off int64
	err error
}

// readView reads the chunks of l's Data extents, in order, into buffers
// from free and sends them on pieces, which it closes at the end; it
// stops early when done is closed.
func readView(l disklayer.Layer, pieces chan<- viewPiece, free <-chan []byte, done <-chan struct{}) {
	defer close(pieces)
	size := l.Size()
	send := func(pc viewPiece) bool {
		select {
		case pieces <- pc:
			return true
		case <-done:
			return false
		}
	}
	next := int64(0) // the first offset not read yet, chunk aligned
	for e, err := range l.Extents(0, size) {
		if err != nil {
			send(viewPiece{err: fmt.Errorf("content digest: %w", err)})
			return
		}
		if e.Kind != disklayer.Data || e.End() <= next {
			continue
		}
		off := max(next, e.Off-e.Off%contentChunk)
		end := min(size, (e.End()+contentChunk-1)/contentChunk*contentChunk)
		for off < end {
			var buf []byte
			select {
			case buf = <-free:
			case <-done:
				return
			}
			p := buf[:min(int64(len(buf)), end-off)]
			if _, err := l.ReadAt(p, off); err != nil {
				send(viewPiece{err: fmt.Errorf("content digest: read %d bytes at %d: %w", len(p), off, err)})
				return
			}
			if !send(viewPiece{p: p, off: off}) {
				return
			}
			off += int64(len(p))
		}
		next = end
	}
}
