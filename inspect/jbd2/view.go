package jbd2

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// View reads the disk with a replayed journal laid over it. Offsets are
// the same as in the io.ReaderAt given to Replay. It is safe for
// concurrent use; it holds no copies of replayed blocks, only where
// they are in the journal, and reads them from the base on demand.
type View struct {
	Info Info

	base      io.ReaderAt
	start     int64 // the filesystem's offset in base
	blockSize int64
	blocks    map[uint64]overlayBlock // filesystem block -> replacement
	keys      []uint64                // sorted keys of blocks
}

// overlayBlock is a replayed block: its copy in the journal, or (for
// the superblock) the bytes themselves.
type overlayBlock struct {
	phys   uint64
	escape bool
	data   []byte
}

// Replayed reports whether the View differs from the disk.
func (v *View) Replayed() bool { return len(v.blocks) > 0 }

// BlockSize is the filesystem's block size in bytes.
func (v *View) BlockSize() int64 { return v.blockSize }

// Blocks returns the overlaid filesystem block numbers, sorted.
func (v *View) Blocks() []uint64 { return append([]uint64(nil), v.keys...) }

// ReadAt reads from the base and replaces the overlaid blocks.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	n, err := v.base.ReadAt(p, off)
	if len(v.keys) == 0 || n == 0 {
		return n, err
	}
	rel := off - v.start
	firstBlock := uint64(max(rel, 0) / v.blockSize)
	end := rel + int64(n)
	if end <= 0 {
		return n, err
	}
	i := sort.Search(len(v.keys), func(i int) bool { return v.keys[i] >= firstBlock })
	for ; i < len(v.keys) && int64(v.keys[i]) < (end+v.blockSize-1)/v.blockSize; i++ {
		if e := v.fill(p[:n], rel, v.keys[i]); e != nil {
			return 0, e
		}
	}
	return n, err
}

// fill copies the part of overlaid block b that p (starting at rel
// bytes into the filesystem) covers.
func (v *View) fill(p []byte, rel int64, b uint64) error {
	blockOff := int64(b) * v.blockSize
	from := max(blockOff, rel)                         // filesystem offset
	to := min(blockOff+v.blockSize, rel+int64(len(p))) // exclusive
	dst := p[from-rel : to-rel]
	e := v.blocks[b]
	inBlock := from - blockOff
	if e.data != nil {
		copy(dst, e.data[inBlock:])
		return nil
	}
	if _, err := v.base.ReadAt(dst, v.start+int64(e.phys)*v.blockSize+inBlock); err != nil {
		return fmt.Errorf("read replayed block %d from journal block %d: %w", b, e.phys, err)
	}
	if e.escape && inBlock < 4 {
		var m [4]byte
		binary.BigEndian.PutUint32(m[:], magic)
		copy(dst, m[inBlock:])
	}
	return nil
}
