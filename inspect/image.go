package inspect

import (
	"errors"
	"fmt"
	"strings"

	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
	"github.com/diskfs/go-diskfs/partition"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/diskfs/go-diskfs/partition/mbr"

	"github.com/hibdisk/hibdisk/disklayer"
)

// tableSectorSize is the logical sector size partition tables are read
// with: what QEMU shows guests whatever the layer's storage sector size.
// A GPT written for 4 KiB logical sectors is tried next.
const tableSectorSize = 512

// Image is a disk opened for inspection. It does not own the layer.
type Image struct {
	layer   disklayer.Layer
	store   *Storage
	table   partition.Table // nil: no partition table
	replays replays         // ext4 journals replayed, by filesystem start
}

// Partition is one entry of the partition table, or the whole disk
// (Index 0) when there is none.
type Partition struct {
	Index  int    `json:"index"`
	Start  int64  `json:"start"` // bytes from the start of the disk
	Size   int64  `json:"size"`  // bytes
	Type   string `json:"type"`  // human name of the partition type
	TypeID string `json:"type_id"`
	Name   string `json:"name,omitempty"` // GPT partition name
	UUID   string `json:"uuid,omitempty"`
	// FS is the filesystem found there by its magic number (KindNone:
	// none); Label is its volume label when it opens.
	FS    Kind   `json:"fs"`
	Label string `json:"label,omitempty"`
}

// Open reads l's partition table; a disk without one is inspected as a
// single filesystem. name is the image's file name, used in errors.
func Open(l disklayer.Layer, name string) (*Image, error) {
	im := &Image{layer: l, store: NewStorage(l, name)}
	t, err := partition.Read(im.store, tableSectorSize, tableSectorSize)
	if err != nil && l.SectorSize() > tableSectorSize {
		t, err = gpt.Read(im.store, l.SectorSize(), l.SectorSize())
	}
	if err == nil && len(usedPartitions(t)) > 0 {
		im.table = t
	}
	return im, nil
}

// usedPartitions drops empty MBR slots and unused GPT entries.
func usedPartitions(t partition.Table) []partitionEntry {
	var out []partitionEntry
	for _, p := range t.GetPartitions() {
		if p == nil || p.GetSize() <= 0 {
			continue
		}
		e := partitionEntry{index: p.GetIndex(), start: p.GetStart(), size: p.GetSize(), uuid: p.UUID(), name: p.Label()}
		switch p := p.(type) {
		case *mbr.Partition:
			if p.Type == mbr.Empty {
				continue
			}
			e.typeID = fmt.Sprintf("0x%02x", byte(p.Type))
			e.typeName = mbrTypeNames[p.Type]
		case *gpt.Partition:
			if p.Type == gpt.Unused {
				continue
			}
			e.typeID = strings.ToUpper(string(p.Type))
			e.typeName = gptTypeNames[p.Type]
		}
		if e.typeName == "" {
			e.typeName = "unknown"
		}
		out = append(out, e)
	}
	return out
}

type partitionEntry struct {
	index            int
	start, size      int64
	typeID, typeName string
	name, uuid       string
}

var mbrTypeNames = map[mbr.Type]string{
	mbr.Fat12: "FAT12", mbr.Fat16: "FAT16 <32M", mbr.Fat16b: "FAT16", mbr.Fat16bLBA: "FAT16 LBA",
	mbr.Fat32CHS: "FAT32", mbr.Fat32LBA: "FAT32 LBA", mbr.NTFS: "NTFS/exFAT",
	mbr.ExtendedCHS: "Extended", mbr.ExtendedLBA: "Extended LBA", mbr.LinuxExtended: "Linux extended",
	mbr.Linux: "Linux", mbr.LinuxSwap: "Linux swap", mbr.LinuxLVM: "Linux LVM",
	mbr.Iso9660: "ISO9660", mbr.GPTProtective: "GPT protective", mbr.EFISystem: "EFI System",
	0x17: "Hidden NTFS/exFAT", 0xfd: "Linux RAID",
}

var gptTypeNames = map[gpt.Type]string{
	gpt.EFISystemPartition: "EFI System", gpt.BIOSBoot: "BIOS boot",
	gpt.MicrosoftBasicData: "Microsoft basic data", gpt.MicrosoftReserved: "Microsoft reserved",
	gpt.LinuxFilesystem: "Linux filesystem", gpt.LinuxSwap: "Linux swap",
	gpt.LinuxRootX86: "Linux root (x86)", gpt.LinuxRootX86_64: "Linux root (x86-64)",
	gpt.LinuxRootArm64: "Linux root (ARM64)", gpt.LinuxHome: "Linux home",
	gpt.LinuxLVM: "Linux LVM", gpt.LinuxRAID: "Linux RAID", gpt.LinuxLUKS: "Linux LUKS",
	gpt.LinuxExtendedBoot: "Linux extended boot",
}

// Layer is the layer the image reads.
func (im *Image) Layer() disklayer.Layer { return im.layer }

// TableType is "gpt", "mbr", or "" when the disk has no partition table.
func (im *Image) TableType() string {
	if im.table == nil {
		return ""
	}
	return im.table.Type()
}

// Partitions lists the partition table with the filesystem detected on
// each partition; without a table, the whole disk as partition 0.
func (im *Image) Partitions() ([]Partition, error) {
	if im.table == nil {
		p := Partition{Index: 0, Start: 0, Size: im.layer.Size(), Type: "whole disk", TypeID: "-"}
		return []Partition{p}, im.describe(&p)
	}
	var out []Partition
	for _, e := range usedPartitions(im.table) {
		p := Partition{Index: e.index, Start: e.start, Size: e.size, Type: e.typeName, TypeID: e.typeID, Name: e.name, UUID: e.uuid}
		if err := im.describe(&p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// describe fills p's filesystem kind and label.
func (im *Image) describe(p *Partition) error {
	if p.Start+p.Size > im.layer.Size() || p.Start < 0 {
		return nil // the table points past the disk: nothing to probe
	}
	kind, err := detect(im.store, p.Start, p.Size)
	if err != nil {
		return err
	}
	p.FS = kind
	if kind == KindNone {
		return nil
	}
	if f, err := im.openAt(p.Index, kind, p.Start, p.Size); err == nil {
		p.Label = strings.TrimSpace(f.Label())
	}
	return nil
}

// partition finds partition index (0: the whole disk).
func (im *Image) partition(index int) (start, size int64, err error) {
	if index == 0 {
		return 0, im.layer.Size(), nil
	}
	if im.table == nil {
		return 0, 0, fmt.Errorf("partition %d: the disk has no partition table (use partition 0 or none for the whole disk): %w", index, ErrNoPartition)
	}
	used := usedPartitions(im.table)
	for _, e := range used {
		if e.index == index {
			if e.start < 0 || e.start+e.size > im.layer.Size() {
				return 0, 0, fmt.Errorf("partition %d: [%d, %d) lies past the end of the %d-byte disk: %w", index, e.start, e.start+e.size, im.layer.Size(), ErrCorrupt)
			}
			return e.start, e.size, nil
		}
	}
	indexes := make([]string, len(used))
	for i, e := range used {
		indexes[i] = fmt.Sprint(e.index)
	}
	return 0, 0, fmt.Errorf("partition %d: the %s table has partitions %s: %w", index, im.table.Type(), strings.Join(indexes, ", "), ErrNoPartition)
}

// DefaultPartition is the partition an IMAGE without :PART means: the
// whole disk when there is no partition table, else the only partition
// holding a recognisable filesystem.
func (im *Image) DefaultPartition() (int, error) {
	if im.table == nil {
		return 0, nil
	}
	parts, err := im.Partitions()
	if err != nil {
		return 0, err
	}
	var withFS []string
	index := -1
	for _, p := range parts {
		if p.FS != KindNone {
			withFS = append(withFS, fmt.Sprint(p.Index))
			index = p.Index
		}
	}
	switch len(withFS) {
	case 0:
		return 0, fmt.Errorf("none of the %d partitions holds a filesystem: %w", len(parts), ErrNoFilesystem)
	case 1:
		return index, nil
	}
	return 0, fmt.Errorf("partitions %s hold filesystems: name one as IMAGE:PART: %w", strings.Join(withFS, ", "), ErrNoPartition)
}

// FS opens the filesystem on partition index (0: the whole disk).
func (im *Image) FS(index int) (*FS, error) {
	start, size, err := im.partition(index)
	if err != nil {
		return nil, err
	}
	kind, err := detect(im.store, start, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where(index), err)
	}
	if kind == KindNone {
		return nil, fmt.Errorf("%s: %w (not FAT, ext2/3/4, ISO9660 or squashfs)", where(index), ErrNoFilesystem)
	}
	fsys, err := im.openAt(index, kind, start, size)
	if err != nil {
		return nil, err
	}
	f := &FS{kind: kind, fsys: fsys, index: index, start: start, size: size}
	if kind == KindExt4 {
		f.view = im.ext4At(start)
		if f.ext, err = readExtRaw(f.view.store, start); err != nil {
			return nil, fmt.Errorf("%s: %w", where(index), err)
		}
		f.warnings = append(f.view.warnings, f.ext.warnings()...)
	}
	return f, nil
}

// openAt parses a filesystem whose kind detect found.
func (im *Image) openAt(index int, kind Kind, start, size int64) (filesystem.FileSystem, error) {
	var (
		fsys filesystem.FileSystem
		err  error
	)
	switch kind {
	case KindFAT12:
		fsys, err = fat12.Read(im.store, size, start, 0)
	case KindFAT16:
		fsys, err = fat16.Read(im.store, size, start, 0)
	case KindFAT32:
		fsys, err = fat32.Read(im.store, size, start, 0)
	case KindExt4:
		fsys, err = ext4.Read(im.ext4At(start).store, size, start, 0)
	case KindISO9660:
		fsys, err = iso9660.Read(im.store, size, start, 0)
	case KindSquashfs:
		fsys, err = squashfs.Read(im.store, size, start, 0)
	default:
		return nil, fmt.Errorf("%s: filesystem %q: %w", where(index), kind, ErrNoFilesystem)
	}
	if err != nil {
		if errors.Is(err, disklayer.ErrClosed) {
			return nil, fmt.Errorf("%s: %w", where(index), err)
		}
		return nil, fmt.Errorf("%s: %s superblock does not parse: %v: %w", where(index), kind, err, ErrCorrupt)
	}
	return fsys, nil
}

// where names a partition in messages.
func where(index int) string {
	if index == 0 {
		return "whole disk"
	}
	return fmt.Sprintf("partition %d", index)
}
