package jbd2

import (
	"fmt"
	"strings"
)

// jbd2 on-disk constants (include/linux/jbd2.h). Every jbd2 field is
// big-endian.
const (
	magic = 0xC03B3998

	blockDescriptor = 1
	blockCommit     = 2
	blockSuperV1    = 3
	blockSuperV2    = 4
	blockRevoke     = 5

	compatChecksum = 0x1 // v1 transaction checksums (crc32_be)

	incompatRevoke      = 0x1
	incompat64bit       = 0x2
	incompatAsyncCommit = 0x4
	incompatCsumV2      = 0x8
	incompatCsumV3      = 0x10
	incompatFastCommit  = 0x20
	knownIncompat       = incompatRevoke | incompat64bit | incompatAsyncCommit | incompatCsumV2 | incompatCsumV3 | incompatFastCommit

	flagEscape   = 1
	flagSameUUID = 2
	flagLastTag  = 8

	crc32cChecksumType = 4 // s_checksum_type for csum v2/v3
	crc32ChecksumType  = 1 // h_chksum_type of a v1 commit block
	crc32ChecksumSize  = 4

	headerSize       = 12 // journal_header_t
	revokeHeaderSize = 16 // jbd2_journal_revoke_header_t
	tailSize         = 4  // jbd2_journal_block_tail
	commitHeaderSize = 64 // sizeof(struct commit_header), padded to 8

	minJournalBlocks      = 1024 // JBD2_MIN_JOURNAL_BLOCKS
	defaultFastCommitBlks = 256  // JBD2_DEFAULT_FAST_COMMIT_BLOCKS
)

// super is the journal superblock as jbd2's journal_load checks and
// reads it (journal_check_superblock, journal_load_superblock).
type super struct {
	version              int // 1 or 2
	blockSize            uint32
	maxLen, first, last  uint32 // log area [first, last)
	totalLen             uint32
	sequence, start      uint32
	compat, incompat, ro uint32
	uuid                 [16]byte
	csumSeed             uint32
}

func (s *super) has(incompat uint32) bool { return s.incompat&incompat != 0 }
func (s *super) csumV23() bool            { return s.has(incompatCsumV2 | incompatCsumV3) }
func (s *super) v1Checksum() bool         { return s.compat&compatChecksum != 0 }

// parseSuper checks the journal superblock b (one block) of a journal
// totalLen blocks long (the journal inode's size) the way the kernel
// does before recovery.
func parseSuper(b []byte, blockSize, totalLen uint32) (*super, error) {
	if be32(b, 0) != magic {
		return nil, fmt.Errorf("journal superblock: no jbd2 magic number: %w", ErrCorrupt)
	}
	s := &super{blockSize: be32(b, 0xC), maxLen: be32(b, 0x10), first: be32(b, 0x14),
		sequence: be32(b, 0x18), start: be32(b, 0x1C), totalLen: totalLen}
	switch be32(b, 4) {
	case blockSuperV1:
		s.version = 1
	case blockSuperV2:
		s.version = 2
		s.compat, s.incompat, s.ro = be32(b, 0x24), be32(b, 0x28), be32(b, 0x2C)
		copy(s.uuid[:], b[0x30:0x40])
	default:
		return nil, fmt.Errorf("journal superblock: block type %d: %w", be32(b, 4), ErrCorrupt)
	}
	if s.blockSize != blockSize {
		return nil, fmt.Errorf("journal superblock: block size %d, filesystem's %d: %w", s.blockSize, blockSize, ErrCorrupt)
	}
	if s.maxLen > totalLen {
		return nil, fmt.Errorf("journal superblock: %d blocks long, journal inode holds %d: %w", s.maxLen, totalLen, ErrCorrupt)
	}
	s.totalLen = min(totalLen, s.maxLen)
	if err := s.checkFeatures(b); err != nil {
		return nil, err
	}
	s.last = s.maxLen
	if s.has(incompatFastCommit) {
		fc := be32(b, 0x54)
		if fc == 0 {
			fc = defaultFastCommitBlks
		}
		if s.maxLen < minJournalBlocks+fc {
			return nil, fmt.Errorf("journal superblock: %d blocks with %d for fast commits: %w", s.maxLen, fc, ErrCorrupt)
		}
		s.last = s.maxLen - fc
	}
	if s.first == 0 || s.first >= s.last || s.start >= s.totalLen {
		return nil, fmt.Errorf("journal superblock: log [%d, %d), start %d, %d blocks: %w", s.first, s.last, s.start, s.totalLen, ErrCorrupt)
	}
	if s.csumV23() {
		s.csumSeed = crc32c(^uint32(0), s.uuid[:])
	}
	return s, nil
}

// checkFeatures refuses what jbd2_journal_load refuses: unknown
// features, two checksum versions at once, a bad superblock checksum.
func (s *super) checkFeatures(b []byte) error {
	if s.incompat&^knownIncompat != 0 || s.ro != 0 {
		return fmt.Errorf("journal features incompat 0x%x, ro_compat 0x%x: %w", s.incompat, s.ro, ErrUnsupported)
	}
	if s.has(incompatCsumV2) && s.has(incompatCsumV3) {
		return fmt.Errorf("journal has checksum v2 and v3: %w", ErrCorrupt)
	}
	if s.csumV23() && s.v1Checksum() {
		return fmt.Errorf("journal has checksum v1 and v2/v3: %w", ErrCorrupt)
	}
	if !s.csumV23() {
		return nil
	}
	if b[0x50] != crc32cChecksumType {
		return fmt.Errorf("journal checksum type %d: %w", b[0x50], ErrUnsupported)
	}
	sb := append([]byte(nil), b[:1024]...)
	stored := be32(sb, 0xFC)
	clear(sb[0xFC:0x100])
	if got := crc32c(^uint32(0), sb); got != stored {
		return fmt.Errorf("journal superblock checksum 0x%08x, computed 0x%08x: %w", stored, got, ErrCorrupt)
	}
	return nil
}

// tagBytes is journal_tag_bytes: the size of one descriptor tag
// without its optional 16-byte UUID.
func (s *super) tagBytes() int {
	if s.has(incompatCsumV3) {
		return 16
	}
	n := 12
	if s.has(incompatCsumV2) {
		n += 2
	}
	if s.has(incompat64bit) {
		return n
	}
	return n - 4
}

// features names the journal's features the way dumpe2fs does.
func (s *super) features() string {
	var f []string
	for _, x := range []struct {
		on   bool
		name string
	}{
		{s.v1Checksum(), "journal_checksum"},
		{s.has(incompatRevoke), "journal_incompat_revoke"},
		{s.has(incompat64bit), "journal_64bit"},
		{s.has(incompatAsyncCommit), "journal_async_commit"},
		{s.has(incompatCsumV2), "journal_checksum_v2"},
		{s.has(incompatCsumV3), "journal_checksum_v3"},
		{s.has(incompatFastCommit), "journal_fast_commit"},
	} {
		if x.on {
			f = append(f, x.name)
		}
	}
	if len(f) == 0 {
		return "(none)"
	}
	return strings.Join(f, " ")
}
