package inspect

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
)

// go-diskfs does not expose everything inspection needs from ext4: the
// error flag, full inode modes in directory listings (its
// DirEntry.Info carries the file type only), and where a file's blocks
// are (which lets Diff skip hashing files whose blocks did not change).
// extRaw reads those few fields straight from the on-disk structures.

// ext4 superblock and inode field offsets (see the kernel's
// Documentation/filesystems/ext4/).
const (
	sbFirstDataBlock = 0x14
	sbLogBlockSize   = 0x18
	sbInodesPerGroup = 0x28
	sbState          = 0x3A
	sbRevLevel       = 0x4C
	sbInodeSize      = 0x58
	sbFeatureCompat  = 0x5C
	sbFeatureIncompt = 0x60
	sbDescSize       = 0xFE

	compatHasJournal   = 0x4
	incompat64Bit      = 0x80
	stateCleanlyUnmntd = 0x1
	stateErrors        = 0x2

	gdInodeTableLo = 0x08
	gdInodeTableHi = 0x28

	inodeMode  = 0x00
	inodeFlags = 0x20
	inodeBlock = 0x28 // i_block, 60 bytes

	inodeFlagExtents    = 0x80000
	inodeFlagInlineData = 0x10000000
	extentMagic         = 0xF30A
)

// extRaw reads raw ext2/3/4 structures of the filesystem at start.
type extRaw struct {
	r              io.ReaderAt
	start          int64
	blockSize      int64
	inodesPerGroup int64
	inodeSize      int64
	descSize       int64
	gdtOff         int64 // byte offset of the group descriptor table
	hasJournal     bool
	errorsFlagged  bool
	cleanUnmount   bool
}

func readExtRaw(r io.ReaderAt, start int64) (*extRaw, error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, start+extSuperblockOff); err != nil {
		return nil, fmt.Errorf("read ext4 superblock: %w", err)
	}
	le := binary.LittleEndian
	x := &extRaw{r: r, start: start}
	logBlock := le.Uint32(sb[sbLogBlockSize:])
	if logBlock > 6 {
		return nil, fmt.Errorf("ext4 superblock: block size 2^(10+%d): %w", logBlock, ErrCorrupt)
	}
	x.blockSize = 1024 << logBlock
	x.inodesPerGroup = int64(le.Uint32(sb[sbInodesPerGroup:]))
	x.inodeSize = 128
	if le.Uint32(sb[sbRevLevel:]) > 0 {
		x.inodeSize = int64(le.Uint16(sb[sbInodeSize:]))
	}
	incompat := le.Uint32(sb[sbFeatureIncompt:])
	x.descSize = 32
	if incompat&incompat64Bit != 0 {
		x.descSize = int64(le.Uint16(sb[sbDescSize:]))
	}
	if x.inodesPerGroup == 0 || x.inodeSize < 128 || x.descSize < 32 {
		return nil, fmt.Errorf("ext4 superblock: %d inodes per group of %d bytes, descriptors of %d bytes: %w",
			x.inodesPerGroup, x.inodeSize, x.descSize, ErrCorrupt)
	}
	x.gdtOff = (int64(le.Uint32(sb[sbFirstDataBlock:])) + 1) * x.blockSize
	x.hasJournal = le.Uint32(sb[sbFeatureCompat:])&compatHasJournal != 0
	state := le.Uint16(sb[sbState:])
	x.cleanUnmount = state&stateCleanlyUnmntd != 0
	x.errorsFlagged = state&stateErrors != 0
	return x, nil
}

// warnings says what a reader of this filesystem should know. (A
// journal that needs recovery is replayed before x is read; ext4View
// warns when it cannot be.)
func (x *extRaw) warnings() []string {
	var w []string
	if x.errorsFlagged {
		w = append(w, "ext4 superblock records filesystem errors; run e2fsck on a copy")
	}
	return w
}

// inode reads inode number ino (1-based).
func (x *extRaw) inode(ino uint32) ([]byte, int64, error) {
	if ino == 0 {
		return nil, 0, fmt.Errorf("ext4 inode 0: %w", ErrCorrupt)
	}
	group := int64(ino-1) / x.inodesPerGroup
	index := int64(ino-1) % x.inodesPerGroup
	gd := make([]byte, x.descSize)
	if _, err := x.r.ReadAt(gd, x.start+x.gdtOff+group*x.descSize); err != nil {
		return nil, 0, fmt.Errorf("read ext4 group descriptor %d: %w", group, err)
	}
	table := int64(binary.LittleEndian.Uint32(gd[gdInodeTableLo:]))
	if x.descSize >= 64 {
		table |= int64(binary.LittleEndian.Uint32(gd[gdInodeTableHi:])) << 32
	}
	off := x.start + table*x.blockSize + index*x.inodeSize
	in := make([]byte, min(x.inodeSize, 256))
	if _, err := x.r.ReadAt(in, off); err != nil {
		return nil, 0, fmt.Errorf("read ext4 inode %d: %w", ino, err)
	}
	return in, off, nil
}

// mode returns inode ino's full mode: file type and permission bits.
func (x *extRaw) mode(ino uint32) (fs.FileMode, error) {
	in, _, err := x.inode(ino)
	if err != nil {
		return 0, err
	}
	return unixMode(uint32(binary.LittleEndian.Uint16(in[inodeMode:]))), nil
}

// unixMode converts st_mode bits to an fs.FileMode.
func unixMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & 0o170000 {
	case 0o040000:
		mode |= fs.ModeDir
	case 0o120000:
		mode |= fs.ModeSymlink
	case 0o020000:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		mode |= fs.ModeDevice
	case 0o010000:
		mode |= fs.ModeNamedPipe
	case 0o140000:
		mode |= fs.ModeSocket
	}
	if m&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// byteRange is [Off, Off+Len) in bytes from the start of the disk.
type byteRange struct{ Off, Len int64 }

// footprint returns the disk byte ranges that determine inode ino's
// content: the inode itself, its extent tree's index blocks and its data
// extents. ok is false when the file is not extent-mapped (ext2/3 block
// maps), whose footprint this does not work out; the caller must then
// compare content.
func (x *extRaw) footprint(ino uint32) (ranges []byteRange, ok bool, err error) {
	in, off, err := x.inode(ino)
	if err != nil {
		return nil, false, err
	}
	ranges = append(ranges, byteRange{off, x.inodeSize})
	flags := binary.LittleEndian.Uint32(in[inodeFlags:])
	if flags&inodeFlagInlineData != 0 {
		// Small files kept inside the inode (and its xattr space).
		return ranges, true, nil
	}
	if flags&inodeFlagExtents == 0 {
		mode := binary.LittleEndian.Uint16(in[inodeMode:]) & 0o170000
		if mode == 0o120000 && binary.LittleEndian.Uint32(in[0x04:]) < 60 {
			return ranges, true, nil // fast symlink: target in i_block
		}
		return nil, false, nil
	}
	ranges, err = x.extentRanges(in[inodeBlock:inodeBlock+60], ranges, 0)
	if err != nil {
		return nil, false, fmt.Errorf("ext4 inode %d extents: %w", ino, err)
	}
	return ranges, true, nil
}

// extentRanges appends the blocks an extent node (header plus entries)
// points at, descending into index nodes.
func (x *extRaw) extentRanges(node []byte, ranges []byteRange, level int) ([]byteRange, error) {
	le := binary.LittleEndian
	if len(node) < 12 || le.Uint16(node) != extentMagic || level > 8 {
		return nil, fmt.Errorf("bad extent node: %w", ErrCorrupt)
	}
	entries, depth := int(le.Uint16(node[2:])), le.Uint16(node[6:])
	if 12+entries*12 > len(node) {
		return nil, fmt.Errorf("extent node with %d entries: %w", entries, ErrCorrupt)
	}
	for i := range entries {
		e := node[12+i*12:]
		if depth == 0 {
			length := int64(le.Uint16(e[4:]))
			if length > 32768 { // uninitialised extent: reads as zeros
				length -= 32768
			}
			block := int64(le.Uint16(e[6:]))<<32 | int64(le.Uint32(e[8:]))
			ranges = append(ranges, byteRange{x.start + block*x.blockSize, length * x.blockSize})
			continue
		}
		block := int64(le.Uint16(e[8:]))<<32 | int64(le.Uint32(e[4:]))
		child := make([]byte, x.blockSize)
		if _, err := x.r.ReadAt(child, x.start+block*x.blockSize); err != nil {
			return nil, fmt.Errorf("read extent index block %d: %w", block, err)
		}
		ranges = append(ranges, byteRange{x.start + block*x.blockSize, x.blockSize})
		var err error
		if ranges, err = x.extentRanges(child, ranges, level+1); err != nil {
			return nil, err
		}
	}
	return ranges, nil
}
