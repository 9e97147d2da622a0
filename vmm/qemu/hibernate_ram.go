package qemu

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hibdisk/hibdisk/hibfile"
)

// pageSize is the unit of the RAM digest and of the holes Resume leaves
// in a rebuilt RAM file.
const pageSize = 4096

// ramChunk is how much RAM is read or written per step: large sequential
// I/O on tmpfs, small enough to stay out of the way of the Go heap.
const ramChunk = 4 << 20

// ramBackendID is the QOM id of the memory-backend-file (Config.RAMPath).
const ramBackendID = "hibdisk-ram"

var zeroPage = make([]byte, pageSize)

// The RAM digest binds a device state to its RAM. Zero pages do not
// count in either form, so a RAM file and its sparse rebuild (holes where
// the hibernate file holds nothing) have the same digest. Two forms, told
// apart by a prefix:
//
//   - "pages:" + hex SHA-256 over every non-zero page in ascending order
//     of offset, each as its offset (8 bytes, little endian) and the
//     first 16 bytes of the page's own SHA-256. Hibernate writes this
//     form. The page sums are independent of each other, so a resumed
//     machine keeps them (ramSums) and its next hibernate hashes only the
//     pages that changed since (the page index finds them): the digest
//     of an idle 1 GiB Debian guest's stacked hibernate no longer hashes
//     its 183 MiB of RAM again (0.2 s, the longest part of it).
//   - plain hex: SHA-256 over every non-zero page in ascending order of
//     offset, each preceded by its offset (8 bytes, little endian). Older
//     snapshots have it; resume and check still verify it.
const pageDigestPrefix = "pages:"

// pageSum is the first 16 bytes of a page's SHA-256; zero for a zero
// page (a data page whose sum is zero is stored as 1 in its last byte,
// like hibfile.PageIndex does).
type pageSum [16]byte

func sumPage(page []byte) pageSum {
	if isZeroPage(page) {
		return pageSum{}
	}
	full := sha256.Sum256(page)
	var s pageSum
	copy(s[:], full[:16])
	if s == (pageSum{}) {
		s[15] = 1
	}
	return s
}

// ramSums holds the pageSum of every page of a RAM.
type ramSums struct{ sums []pageSum }

func newRAMSums(size int64) *ramSums {
	return &ramSums{sums: make([]pageSum, (size+pageSize-1)/pageSize)}
}

// add sums the pages of p, which starts at off (page aligned).
func (r *ramSums) add(p []byte, off int64) {
	for i := 0; i < len(p); i += pageSize {
		if n := (off + int64(i)) / pageSize; n < int64(len(r.sums)) {
			r.sums[n] = sumPage(p[i:min(i+pageSize, len(p))])
		}
	}
}

// digest is the RAM digest in its "pages:" form.
func (r *ramSums) digest() string {
	h := sha256.New()
	var rec [8 + len(pageSum{})]byte
	for n, s := range r.sums {
		if s == (pageSum{}) {
			continue
		}
		binary.LittleEndian.PutUint64(rec[:8], uint64(n)*pageSize)
		copy(rec[8:], s[:])
		h.Write(rec[:])
	}
	return pageDigestPrefix + hex.EncodeToString(h.Sum(nil))
}

// streamDigest computes the plain-hex form of the RAM digest.
type streamDigest struct {
	h    hash.Hash
	last int64 // offset of the last page added; pages must ascend
	off  [8]byte
}

func newStreamDigest() *streamDigest { return &streamDigest{h: sha256.New(), last: -1} }

// add hashes the non-zero pages of p, which starts at off (page aligned).
func (d *streamDigest) add(p []byte, off int64) {
	for i := 0; i < len(p); i += pageSize {
		page := p[i:min(i+pageSize, len(p))]
		if bytes.Equal(page, zeroPage[:len(page)]) {
			continue
		}
		at := off + int64(i)
		if at <= d.last {
			panic(fmt.Sprintf("qemu: RAM digest pages out of order: %#x after %#x", at, d.last))
		}
		d.last = at
		binary.LittleEndian.PutUint64(d.off[:], uint64(at))
		d.h.Write(d.off[:])
		d.h.Write(page)
	}
}

func (d *streamDigest) hex() string { return hex.EncodeToString(d.h.Sum(nil)) }

// ramVerifier computes the digest of a RAM read in ascending order, in
// the form of want (the digest it is to be checked against), and the page
// sums for the machine's next hibernate.
type ramVerifier struct {
	sums   *ramSums
	stream *streamDigest // only for the plain form
}

func newRAMVerifier(want string, size int64) *ramVerifier {
	v := &ramVerifier{sums: newRAMSums(size)}
	if !strings.HasPrefix(want, pageDigestPrefix) {
		v.stream = newStreamDigest()
	}
	return v
}

func (v *ramVerifier) add(p []byte, off int64) {
	v.sums.add(p, off)
	if v.stream != nil {
		v.stream.add(p, off)
	}
}

func (v *ramVerifier) digest() string {
	if v.stream != nil {
		return v.stream.hex()
	}
	return v.sums.digest()
}

// validDigest reports whether d is a RAM digest in either form.
func validDigest(d string) bool {
	b, err := hex.DecodeString(strings.TrimPrefix(d, pageDigestPrefix))
	return err == nil && len(b) == sha256.Size
}

// ramImage reads a RAM file for hibfile.Save: a stretch with no data
// (pages the guest never touched) reads as zeros without touching the
// file, found with SEEK_DATA; the rest of a read, from its first data
// on, is one pread, in which holes read as zeros. (A hole for hole:
// SEEK_DATA and SEEK_HOLE around every extent, was a system call pair
// per extent, and a Linux guest's RAM alternates data and holes page by
// page.)
type ramImage struct {
	f    *os.File
	size int64
}

// ReadAt implements io.ReaderAt.
func (r *ramImage) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), r.size)
	data, err := unix.Seek(int(r.f.Fd()), off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO) || (err == nil && data >= end):
		clear(p[:end-off])
	case err != nil:
		return 0, fmt.Errorf("seek data in %s at %#x: %w", r.f.Name(), off, err)
	default:
		clear(p[:data-off])
		if _, err := r.f.ReadAt(p[data-off:end-off], data); err != nil && !errors.Is(err, io.EOF) {
			return int(data - off), fmt.Errorf("read %s at %#x: %w", r.f.Name(), data, err)
		}
	}
	if n := int(end - off); n < len(p) {
		return n, io.EOF
	}
	return len(p), nil
}

// hibernateDigest computes the "pages:" RAM digest of the RAM file at
// path, of size bytes. With the page sums and page index of the RAM as a
// resume rebuilt it (a resumed machine), a page the index says is
// unchanged keeps its sum, so only changed pages are hashed; otherwise
// every data page is.
func hibernateDigest(path string, size int64, was *ramSums, index *hibfile.PageIndex) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("digest RAM: %w", err)
	}
	defer f.Close()
	img := &ramImage{f: f, size: size}
	sums := newRAMSums(size)
	buf := make([]byte, ramChunk)
	for off := int64(0); off < size; off += ramChunk {
		n := min(ramChunk, size-off)
		p := buf[:n]
		if _, err := img.ReadAt(p, off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("digest RAM: %w", err)
		}
		for i := int64(0); i < n; i += pageSize {
			page := p[i:min(i+pageSize, n)]
			at := (off + i) / pageSize
			if was != nil && index != nil && int64(len(page)) == pageSize {
				if same, known := index.Same(page, off+i); known && same && at < int64(len(was.sums)) {
					sums.sums[at] = was.sums[at]
					continue
				}
			}
			sums.sums[at] = sumPage(page)
		}
	}
	return sums.digest(), nil
}

// digestRAM computes the digest of the RAM file f of size bytes in the
// form of want, records its pages in index if that is not nil, and
// returns the page sums.
func digestRAM(f *os.File, size int64, want string, index *hibfile.PageIndex) (string, *ramSums, error) {
	img := &ramImage{f: f, size: size}
	v := newRAMVerifier(want, size)
	buf := make([]byte, ramChunk)
	for off := int64(0); off < size; off += ramChunk {
		n := min(ramChunk, size-off)
		if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return "", nil, fmt.Errorf("digest RAM: %w", err)
		}
		v.add(buf[:n], off)
		if index != nil {
			index.Add(buf[:n], off)
		}
	}
	return v.digest(), v.sums, nil
}

// isZeroPage reports whether p (any length) is all zeros.
func isZeroPage(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), pageSize)
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// writeRAMPages writes the non-zero pages of p (at off) to f in runs,
// leaving holes for zero pages, and returns the bytes written.
func writeRAMPages(f *os.File, p []byte, off int64) (int64, error) {
	runStart := -1
	var written int64
	flush := func(end int) error {
		if runStart < 0 {
			return nil
		}
		_, err := f.WriteAt(p[runStart:end], off+int64(runStart))
		written += int64(end - runStart)
		runStart = -1
		if err != nil {
			return fmt.Errorf("write RAM file %s: %w", f.Name(), err)
		}
		return nil
	}
	for i := 0; i < len(p); i += pageSize {
		end := min(i+pageSize, len(p))
		if bytes.Equal(p[i:end], zeroPage[:end-i]) {
			if err := flush(i); err != nil {
				return written, err
			}
			continue
		}
		if runStart < 0 {
			runStart = i
		}
	}
	err := flush(len(p))
	return written, err
}
