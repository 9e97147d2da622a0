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

// ramDigest is the digest that binds a device state to its RAM: SHA-256
// over every non-zero page, in ascending order of offset, each preceded
// by its offset (8 bytes, little endian). Zero pages do not count, so a
// RAM file and its sparse rebuild (holes where the hibernate file holds
// nothing) have the same digest, and hashing costs only the data.
type ramDigest struct {
	h    hash.Hash
	last int64 // offset of the last page added; pages must ascend
	off  [8]byte
}

func newRAMDigest() *ramDigest { return &ramDigest{h: sha256.New(), last: -1} }

// add hashes the non-zero pages of p, which starts at off (page aligned).
func (d *ramDigest) add(p []byte, off int64) {
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

func (d *ramDigest) hex() string { return hex.EncodeToString(d.h.Sum(nil)) }

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

// digestRAMFile computes the RAM digest of a RAM file of size bytes.
func digestRAMFile(path string, size int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("digest RAM: %w", err)
	}
	defer f.Close()
	return digestRAM(f, size, nil)
}

// digestRAM computes the RAM digest of the RAM file f of size bytes, and
// records its pages in index if that is not nil.
func digestRAM(f *os.File, size int64, index *hibfile.PageIndex) (string, error) {
	img := &ramImage{f: f, size: size}
	d := newRAMDigest()
	buf := make([]byte, ramChunk)
	for off := int64(0); off < size; off += ramChunk {
		n := min(ramChunk, size-off)
		if _, err := img.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("digest RAM: %w", err)
		}
		d.add(buf[:n], off)
		if index != nil {
			index.Add(buf[:n], off)
		}
	}
	return d.hex(), nil
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
