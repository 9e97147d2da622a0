package jbd2

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// ext4 superblock fields, as offsets into the 1024-byte superblock that
// starts 1024 bytes into the filesystem (Documentation/filesystems/ext4/super.rst).
const (
	superOff          = 1024
	superSize         = 1024
	sbFirstDataBlock  = 0x14
	sbLogBlockSize    = 0x18
	sbInodesPerGroup  = 0x28
	sbMagic           = 0x38
	sbState           = 0x3A
	sbRevLevel        = 0x4C
	sbInodeSize       = 0x58
	sbFeatureCompat   = 0x5C
	sbFeatureIncompat = 0x60
	sbFeatureROCompat = 0x64
	sbJournalInum     = 0xE0
	sbJournalDev      = 0xE4
	sbDescSize        = 0xFE
	sbErrStart        = 0x194 // s_error_count: the error fields the kernel keeps across replay
	sbErrEnd          = 0x200 // s_mount_opts
	sbChecksum        = 0x3FC

	extMagic             = 0xEF53
	stateValid           = 0x1 // cleanly unmounted
	compatHasJournal     = 0x4
	incompatRecover      = 0x4
	incompatJournalDev   = 0x8
	incompat64Bit        = 0x80
	roCompatMetadataCsum = 0x400

	inodeSizeLo = 0x04
	inodeFlags  = 0x20
	inodeBlock  = 0x28 // i_block, 60 bytes
	inodeSizeHi = 0x6C

	inodeFlagExtents = 0x80000
	extentMagic      = 0xF30A
	maxBlockNr       = 1 << 40 // keeps block*blockSize far from overflow
)

// ext4 is what Replay needs of the filesystem: its superblock and a way
// to read its blocks.
type ext4 struct {
	r         io.ReaderAt
	start     int64 // byte offset of the filesystem in r
	sb        []byte
	blockSize int64
}

func readExt4(r io.ReaderAt, start int64) (*ext4, error) {
	sb := make([]byte, superSize)
	if _, err := r.ReadAt(sb, start+superOff); err != nil {
		return nil, fmt.Errorf("read ext4 superblock: %w", err)
	}
	if le16(sb, sbMagic) != extMagic {
		return nil, fmt.Errorf("ext4 superblock: no magic number: %w", ErrCorrupt)
	}
	logBlock := le32(sb, sbLogBlockSize)
	if logBlock > 6 {
		return nil, fmt.Errorf("ext4 superblock: block size 2^(10+%d): %w", logBlock, ErrCorrupt)
	}
	return &ext4{r: r, start: start, sb: sb, blockSize: 1024 << logBlock}, nil
}

func (f *ext4) needsRecovery() bool { return le32(f.sb, sbFeatureIncompat)&incompatRecover != 0 }

// readBlock reads filesystem block n into p (len(p) == blockSize).
func (f *ext4) readBlock(p []byte, n uint64) error {
	if n >= maxBlockNr {
		return fmt.Errorf("block %d out of range: %w", n, ErrCorrupt)
	}
	if _, err := f.r.ReadAt(p, f.start+int64(n)*f.blockSize); err != nil {
		return fmt.Errorf("read filesystem block %d: %w", n, err)
	}
	return nil
}

// inode reads inode ino (1-based) through its group descriptor.
func (f *ext4) inode(ino uint32) ([]byte, error) {
	perGroup := int64(le32(f.sb, sbInodesPerGroup))
	inodeSize, descSize := int64(128), int64(32)
	if le32(f.sb, sbRevLevel) > 0 {
		inodeSize = int64(le16(f.sb, sbInodeSize))
	}
	if le32(f.sb, sbFeatureIncompat)&incompat64Bit != 0 {
		descSize = int64(le16(f.sb, sbDescSize))
	}
	if ino == 0 || perGroup == 0 || inodeSize < 128 || descSize < 32 || descSize > 1024 {
		return nil, fmt.Errorf("ext4 inode %d: %d inodes per group of %d bytes, descriptors of %d bytes: %w",
			ino, perGroup, inodeSize, descSize, ErrCorrupt)
	}
	group, index := int64(ino-1)/perGroup, int64(ino-1)%perGroup
	gdt := (int64(le32(f.sb, sbFirstDataBlock)) + 1) * f.blockSize
	gd := make([]byte, descSize)
	if _, err := f.r.ReadAt(gd, f.start+gdt+group*descSize); err != nil {
		return nil, fmt.Errorf("read ext4 group descriptor %d: %w", group, err)
	}
	table := uint64(le32(gd, 0x08))
	if descSize >= 64 {
		table |= uint64(le32(gd, 0x28)) << 32
	}
	if table >= maxBlockNr {
		return nil, fmt.Errorf("ext4 group %d: inode table at block %d: %w", group, table, ErrCorrupt)
	}
	in := make([]byte, 160)
	if _, err := f.r.ReadAt(in, f.start+int64(table)*f.blockSize+index*inodeSize); err != nil {
		return nil, fmt.Errorf("read ext4 inode %d: %w", ino, err)
	}
	return in, nil
}

// run maps count journal blocks from logical block log to filesystem
// block phys.
type run struct{ log, phys, count uint64 }

// blockMap is a file's logical-to-physical map, sorted by logical block.
type blockMap []run

// lookup returns the filesystem block of logical block n.
func (m blockMap) lookup(n uint64) (uint64, bool) {
	i := sort.Search(len(m), func(i int) bool { return m[i].log+m[i].count > n })
	if i == len(m) || m[i].log > n {
		return 0, false
	}
	return m[i].phys + n - m[i].log, true
}

// fileMap reads the block map of inode in, up to nblocks logical blocks:
// its extent tree, or the ext2/3 direct and indirect blocks.
func (f *ext4) fileMap(in []byte, nblocks uint64) (blockMap, error) {
	var m blockMap
	var err error
	if le32(in, inodeFlags)&inodeFlagExtents != 0 {
		err = f.extents(in[inodeBlock:inodeBlock+60], &m, 0)
	} else {
		err = f.indirect(in[inodeBlock:inodeBlock+60], nblocks, &m)
	}
	if err != nil {
		return nil, err
	}
	sort.Slice(m, func(i, j int) bool { return m[i].log < m[j].log })
	return m, nil
}

// extents appends the leaves of an extent tree node, descending into
// index nodes (depth at most 5, as the kernel allows).
func (f *ext4) extents(node []byte, m *blockMap, level int) error {
	if len(node) < 12 || le16(node, 0) != extentMagic || level > 5 {
		return fmt.Errorf("journal inode: bad extent node: %w", ErrCorrupt)
	}
	entries, depth := int(le16(node, 2)), le16(node, 6)
	if 12+entries*12 > len(node) {
		return fmt.Errorf("journal inode: extent node with %d entries: %w", entries, ErrCorrupt)
	}
	for i := range entries {
		e := node[12+i*12:]
		if depth == 0 {
			length := uint64(le16(e, 4))
			if length > 32768 {
				continue // unwritten: bmap does not map it, so neither do we
			}
			phys := uint64(le16(e, 6))<<32 | uint64(le32(e, 8))
			*m = append(*m, run{log: uint64(le32(e, 0)), phys: phys, count: length})
			continue
		}
		child := make([]byte, f.blockSize)
		if err := f.readBlock(child, uint64(le16(e, 8))<<32|uint64(le32(e, 4))); err != nil {
			return fmt.Errorf("journal inode extent index: %w", err)
		}
		if err := f.extents(child, m, level+1); err != nil {
			return err
		}
	}
	return nil
}

// indirect maps an ext2/3 block-mapped file: 12 direct blocks, then one
// single, one double and one triple indirect block.
func (f *ext4) indirect(iblock []byte, nblocks uint64, m *blockMap) error {
	next := uint64(0)
	for i := 0; i < 15 && next < nblocks; i++ {
		ptr := uint64(le32(iblock, i*4))
		level := max(0, i-11)
		if err := f.mapIndirect(ptr, level, &next, nblocks, m); err != nil {
			return err
		}
	}
	return nil
}

// mapIndirect maps the subtree under ptr (level 0: a data block) to
// logical blocks from *next on.
func (f *ext4) mapIndirect(ptr uint64, level int, next *uint64, nblocks uint64, m *blockMap) error {
	per := uint64(f.blockSize / 4)
	span := uint64(1)
	for range level {
		span *= per
	}
	if ptr == 0 {
		*next += span // a hole
		return nil
	}
	if level == 0 {
		if n := len(*m); n > 0 && (*m)[n-1].log+(*m)[n-1].count == *next && (*m)[n-1].phys+(*m)[n-1].count == ptr {
			(*m)[n-1].count++
		} else {
			*m = append(*m, run{log: *next, phys: ptr, count: 1})
		}
		*next++
		return nil
	}
	blk := make([]byte, f.blockSize)
	if err := f.readBlock(blk, ptr); err != nil {
		return fmt.Errorf("journal inode indirect block: %w", err)
	}
	for i := uint64(0); i < per && *next < nblocks; i++ {
		if err := f.mapIndirect(uint64(le32(blk, int(i*4))), level-1, next, nblocks, m); err != nil {
			return err
		}
	}
	return nil
}

func le16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
func be16(b []byte, off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }
func be32(b []byte, off int) uint32 { return binary.BigEndian.Uint32(b[off:]) }
func be64(b []byte, off int) uint64 { return binary.BigEndian.Uint64(b[off:]) }
