package jbd2

import (
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"slices"
)

// maxJournalBlocks bounds the journal size Replay accepts (i_size of the
// journal inode, in blocks): 2^24 blocks is 16 GiB of 1 KiB blocks,
// far above what mke2fs makes (at most 1 GiB, or 2^20 blocks).
const maxJournalBlocks = 1 << 24

// Info describes what Replay found and did.
type Info struct {
	// NeedsRecovery: the superblock's needs_recovery flag was set. When
	// it is false nothing else is filled in and the View is the disk.
	NeedsRecovery bool
	JournalInode  uint32
	Features      string // the journal's features, as dumpe2fs names them
	BlockSize     int
	LogBlocks     uint32 // s_maxlen
	Start         uint32 // s_start: 0 means the journal was empty
	// Transactions [FirstTransaction, EndTransaction) were replayed.
	FirstTransaction, EndTransaction uint32
	Replayed                         int // block writes replayed, counting overwrites
	Blocks                           int // distinct filesystem blocks the View overlays
	Revokes, RevokeHits              int
	Wrapped                          bool // the replayed log wraps from s_maxlen to s_first
	// Warnings are things the kernel's recovery would report: a
	// corrupt transaction, blocks whose checksum fails, fast commits
	// not replayed. The View still shows what recovery would leave.
	Warnings []string
}

// Replay reads the ext4 (or ext3) filesystem that starts fsOffset bytes
// into r and, when its superblock says the journal needs recovery,
// replays the journal in memory the way the kernel's jbd2 recovery
// would, writing nothing. The View reads like r with the replayed
// blocks in place and the superblock's needs_recovery flag cleared.
//
// An error means the journal cannot be replayed (an external journal, a
// feature or damage the kernel would refuse); the caller should then
// read r as it is and say why.
func Replay(r io.ReaderAt, fsOffset int64) (*View, error) {
	fs, err := readExt4(r, fsOffset)
	if err != nil {
		return nil, err
	}
	v := &View{base: r, start: fsOffset, blockSize: fs.blockSize}
	if !fs.needsRecovery() {
		return v, nil
	}
	v.Info.NeedsRecovery = true
	j, err := openJournal(fs)
	if err != nil {
		return nil, err
	}
	v.Info.JournalInode = le32(fs.sb, sbJournalInum)
	if err := j.recover(); err != nil {
		return nil, fmt.Errorf("replay ext4 journal: %w", err)
	}
	if err := v.install(j, fs); err != nil {
		return nil, err
	}
	return v, nil
}

// openJournal finds the internal journal and reads its superblock.
func openJournal(fs *ext4) (*journal, error) {
	if le32(fs.sb, sbFeatureCompat)&compatHasJournal == 0 {
		return nil, fmt.Errorf("superblock says the journal needs recovery but the filesystem has no journal: %w", ErrCorrupt)
	}
	ino := le32(fs.sb, sbJournalInum)
	if ino == 0 {
		return nil, fmt.Errorf("journal on device 0x%x: %w", le32(fs.sb, sbJournalDev), ErrExternalJournal)
	}
	in, err := fs.inode(ino)
	if err != nil {
		return nil, fmt.Errorf("journal inode %d: %w", ino, err)
	}
	size := uint64(le32(in, inodeSizeLo)) | uint64(le32(in, inodeSizeHi))<<32
	nblocks := size / uint64(fs.blockSize)
	if nblocks > maxJournalBlocks || nblocks < 2 {
		return nil, fmt.Errorf("journal inode %d: %d blocks: %w", ino, nblocks, ErrUnsupported)
	}
	m, err := fs.fileMap(in, nblocks)
	if err != nil {
		return nil, err
	}
	j := &journal{fs: fs, bmap: m, bs: int(fs.blockSize), revoked: map[uint64]uint32{}, overlay: map[uint64]logBlock{},
		sb: &super{totalLen: uint32(nblocks)}}
	b, err := j.read(0)
	if err != nil {
		return nil, fmt.Errorf("journal superblock: %w", err)
	}
	if j.sb, err = parseSuper(b, uint32(fs.blockSize), uint32(nblocks)); err != nil {
		return nil, err
	}
	if j.sb.has(incompatFastCommit) {
		j.warn("the journal has fast commits, which are not replayed: changes committed by fast commit after the last full transaction are missing")
	}
	return j, nil
}

// install makes the recovered journal the View's overlay and writes
// the superblock as the kernel leaves it after recovery.
func (v *View) install(j *journal, fs *ext4) error {
	v.blocks = make(map[uint64]overlayBlock, len(j.overlay)+1)
	for n, lb := range j.overlay {
		v.blocks[n] = overlayBlock{phys: lb.phys, escape: lb.escape}
	}
	v.Info.Features, v.Info.BlockSize, v.Info.LogBlocks, v.Info.Start = j.sb.features(), j.bs, j.sb.maxLen, j.sb.start
	v.Info.FirstTransaction, v.Info.EndTransaction = j.startTID, j.endTID
	if j.sb.start == 0 {
		v.Info.FirstTransaction, v.Info.EndTransaction = j.sb.sequence, j.sb.sequence
	}
	v.Info.Replayed, v.Info.Revokes, v.Info.RevokeHits, v.Info.Wrapped = j.replays, j.nrRevokes, j.revokeHits, j.wrapped
	v.Info.Warnings = j.warnings
	v.sortKeys()
	if err := v.patchSuper(fs.sb, j.failed); err != nil {
		return err
	}
	v.sortKeys()
	v.Info.Blocks = len(v.blocks)
	return nil
}

func (v *View) sortKeys() { v.keys = slices.Sorted(maps.Keys(v.blocks)) }

// patchSuper puts the superblock the kernel would leave in the overlay:
// the replayed one (or the disk's), with the error fields kept from
// before replay (ext4_load_journal saves and restores them), the
// needs_recovery flag cleared and the checksum recomputed. When replay
// failed part way, the valid flag is cleared too, as e2fsck does
// (e2fsck_clear_recover), so the filesystem shows as needing a check.
func (v *View) patchSuper(onDisk []byte, failed bool) error {
	sbBlock := uint64(superOff / v.blockSize)
	within := superOff % v.blockSize
	blk := make([]byte, v.blockSize)
	if _, err := v.ReadAt(blk, v.start+int64(sbBlock)*v.blockSize); err != nil {
		return fmt.Errorf("read replayed superblock: %w", err)
	}
	sb := blk[within : within+superSize]
	copy(sb[sbErrStart:sbErrEnd], onDisk[sbErrStart:sbErrEnd])
	binary.LittleEndian.PutUint32(sb[sbFeatureIncompat:], le32(sb, sbFeatureIncompat)&^incompatRecover)
	if failed {
		binary.LittleEndian.PutUint16(sb[sbState:], le16(sb, sbState)&^stateValid)
	}
	if le32(sb, sbFeatureROCompat)&roCompatMetadataCsum != 0 {
		binary.LittleEndian.PutUint32(sb[sbChecksum:], crc32c(^uint32(0), sb[:sbChecksum]))
	}
	v.blocks[sbBlock] = overlayBlock{data: blk}
	return nil
}
