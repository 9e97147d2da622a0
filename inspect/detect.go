package inspect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Kind is a filesystem type.
type Kind string

// The filesystems Open recognises. KindNone means none was found.
const (
	KindNone     Kind = ""
	KindFAT12    Kind = "fat12"
	KindFAT16    Kind = "fat16"
	KindFAT32    Kind = "fat32"
	KindExt4     Kind = "ext4" // ext2 and ext3 too: go-diskfs reads them all as ext4
	KindISO9660  Kind = "iso9660"
	KindSquashfs Kind = "squashfs"
)

// Magic-number locations, relative to the start of the filesystem.
const (
	extSuperblockOff = 1024
	extMagicOff      = extSuperblockOff + 0x38
	extMagic         = 0xEF53
	isoDescriptorOff = 16 * 2048 // first volume descriptor
	probeSize        = isoDescriptorOff + 2048
)

// detect identifies the filesystem at [start, start+size) of r by its
// magic numbers, without trusting anything else in it.
func detect(r io.ReaderAt, start, size int64) (Kind, error) {
	buf := make([]byte, min(probeSize, size))
	if _, err := r.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
		return KindNone, fmt.Errorf("probe filesystem at %d: %w", start, err)
	}
	switch {
	case len(buf) >= 4 && string(buf[:4]) == "hsqs":
		return KindSquashfs, nil
	case len(buf) >= extMagicOff+2 && binary.LittleEndian.Uint16(buf[extMagicOff:]) == extMagic:
		return KindExt4, nil
	case len(buf) >= isoDescriptorOff+6 && string(buf[isoDescriptorOff+1:isoDescriptorOff+6]) == "CD001":
		return KindISO9660, nil
	}
	if len(buf) >= 512 {
		return fatKind(buf[:512]), nil
	}
	return KindNone, nil
}

// fatKind classifies a FAT boot sector the way the FAT specification
// does, by its count of clusters, after checking that the BIOS parameter
// block is plausible. It returns KindNone for anything else.
func fatKind(bs []byte) Kind {
	if bs[510] != 0x55 || bs[511] != 0xAA || (bs[0] != 0xEB && bs[0] != 0xE9) {
		return KindNone
	}
	bytesPerSector := int64(binary.LittleEndian.Uint16(bs[11:]))
	sectorsPerCluster := int64(bs[13])
	reserved := int64(binary.LittleEndian.Uint16(bs[14:]))
	fats := int64(bs[16])
	rootEntries := int64(binary.LittleEndian.Uint16(bs[17:]))
	total := int64(binary.LittleEndian.Uint16(bs[19:]))
	if total == 0 {
		total = int64(binary.LittleEndian.Uint32(bs[32:]))
	}
	fatSize := int64(binary.LittleEndian.Uint16(bs[22:]))
	if fatSize == 0 {
		fatSize = int64(binary.LittleEndian.Uint32(bs[36:]))
	}
	if bytesPerSector < 512 || bytesPerSector > 4096 || bytesPerSector&(bytesPerSector-1) != 0 ||
		sectorsPerCluster == 0 || sectorsPerCluster&(sectorsPerCluster-1) != 0 ||
		reserved == 0 || fats == 0 || fatSize == 0 || total == 0 {
		return KindNone
	}
	// An NTFS or exFAT boot sector also starts with a jump; their OEM
	// names give them away.
	if bytes.HasPrefix(bs[3:], []byte("NTFS")) || bytes.HasPrefix(bs[3:], []byte("EXFAT")) {
		return KindNone
	}
	rootSectors := (rootEntries*32 + bytesPerSector - 1) / bytesPerSector
	data := total - reserved - fats*fatSize - rootSectors
	if data <= 0 {
		return KindNone
	}
	switch clusters := data / sectorsPerCluster; {
	case clusters < 4085:
		return KindFAT12
	case clusters < 65525:
		return KindFAT16
	default:
		return KindFAT32
	}
}
