package jbd2

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// This file follows fs/jbd2/recovery.c (do_one_pass, jbd2_do_replay,
// scan_revoke_records, calc_chksums) step for step, including its
// quirks, so that the blocks it overlays are the ones the kernel would
// write. Where the kernel's C "break" leaves a switch (not the loop),
// the Go code says continue.

type pass int

const (
	passScan pass = iota
	passRevoke
	passReplay
)

// journal is an internal journal being recovered.
type journal struct {
	fs   *ext4
	sb   *super
	bmap blockMap
	bs   int

	// recovery_info
	startTID, endTID uint32
	headBlock        uint32
	failedCommit     uint32
	nrRevokes        int
	revokeHits       int
	replays          int

	wrapped  bool              // the replayed log ran past its end
	failed   bool              // replay hit errors: recovery reports failure
	revoked  map[uint64]uint32 // block -> newest revoking transaction
	overlay  map[uint64]logBlock
	warnings []string
}

// logBlock says where a replayed filesystem block's content is.
type logBlock struct {
	phys   uint64 // filesystem block holding it in the journal
	escape bool   // restore the magic number in its first 4 bytes
}

func tidGT(x, y uint32) bool  { return int32(x-y) > 0 }
func tidGEQ(x, y uint32) bool { return int32(x-y) >= 0 }

// wrap is recovery.c's wrap(): the log is circular over [first, last).
func (j *journal) wrap(b uint32) uint32 {
	if b >= j.sb.last {
		b -= j.sb.last - j.sb.first
	}
	return b
}

// phys maps journal block off to its filesystem block (jbd2_journal_bmap).
func (j *journal) phys(off uint32) (uint64, error) {
	if off >= j.sb.totalLen {
		return 0, fmt.Errorf("journal block %d past its %d blocks: %w", off, j.sb.totalLen, ErrCorrupt)
	}
	p, ok := j.bmap.lookup(uint64(off))
	if !ok {
		return 0, fmt.Errorf("journal block %d is not mapped by the journal inode: %w", off, ErrCorrupt)
	}
	return p, nil
}

// read is jread: journal block off.
func (j *journal) read(off uint32) ([]byte, error) {
	p, err := j.phys(off)
	if err != nil {
		return nil, err
	}
	b := make([]byte, j.bs)
	if err := j.fs.readBlock(b, p); err != nil {
		return nil, fmt.Errorf("journal block %d: %w", off, err)
	}
	return b, nil
}

// recover runs the three passes (jbd2_journal_recover). A non-nil error
// means the kernel's recovery would fail before replaying anything.
func (j *journal) recover() error {
	if j.sb.start == 0 {
		return nil // s_start 0: nothing to recover
	}
	for _, p := range []pass{passScan, passRevoke, passReplay} {
		if err := j.onePass(p); err != nil {
			return err
		}
	}
	if j.failedCommit != 0 {
		j.warn(fmt.Sprintf("journal transaction %d is corrupt (its commit block checksum fails): replay stopped before it, and the kernel would refuse to mount", j.failedCommit))
	}
	return nil
}

func (j *journal) warn(s string) { j.warnings = append(j.warnings, s) }

// walk is do_one_pass's loop state.
type walk struct {
	pass           pass
	nextCommitID   uint32
	nextLogBlock   uint32
	headBlock      uint32
	crc32Sum       uint32
	needCheckTime  bool
	lastCommitTime uint64
	steps          int // log blocks walked in this pass
}

// advance moves the walk n log blocks on, wrapping.
func (j *journal) advance(w *walk, n int) {
	w.nextLogBlock = j.wrap(w.nextLogBlock + uint32(n))
	w.steps += n
	if w.pass == passReplay && w.nextLogBlock == j.sb.first && n > 0 {
		j.wrapped = true
	}
}

// errDone ends a pass successfully (recovery.c's "goto done").
var errDone = errors.New("done")

func (j *journal) onePass(p pass) error {
	w := &walk{pass: p, nextCommitID: j.sb.sequence, nextLogBlock: j.sb.start, headBlock: j.sb.start, crc32Sum: ^uint32(0)}
	if p == passScan {
		j.startTID = w.nextCommitID
	}
	for {
		if p != passScan && tidGEQ(w.nextCommitID, j.endTID) {
			break
		}
		// A log cannot be longer than the journal. The kernel has no
		// such check and would go round a damaged one for ever.
		if w.steps > int(j.sb.last-j.sb.first)+1 {
			return fmt.Errorf("recovery pass %d: the log runs round the whole journal: %w", p, ErrCorrupt)
		}
		b, err := j.read(w.nextLogBlock)
		if err != nil {
			return fmt.Errorf("recovery pass %d: %w", p, err)
		}
		j.advance(w, 1)
		if be32(b, 0) != magic || be32(b, 8) != w.nextCommitID {
			break
		}
		err = j.block(w, b, be32(b, 4))
		if errors.Is(err, errDone) {
			break
		}
		if err != nil {
			return err
		}
	}
	if p == passScan {
		if j.endTID == 0 {
			j.endTID = w.nextCommitID
		}
		if j.headBlock == 0 {
			j.headBlock = w.headBlock
		}
	} else if j.endTID != w.nextCommitID {
		j.warn(fmt.Sprintf("recovery pass %d ended at transaction %d, expected %d", p, w.nextCommitID, j.endTID))
		j.failed = true
	}
	return nil
}

// block handles one log block of the expected sequence.
func (j *journal) block(w *walk, b []byte, blockType uint32) error {
	switch blockType {
	case blockDescriptor:
		return j.descriptor(w, b)
	case blockCommit:
		return j.commit(w, b)
	case blockRevoke:
		if w.pass == passReplay {
			return nil
		}
		if w.pass == passScan && !j.tailCsumOK(b) {
			w.needCheckTime = true
		}
		return j.scanRevoke(w, b)
	}
	return errDone // unrecognised block type: end of the log
}

func (j *journal) descriptor(w *walk, b []byte) error {
	if !j.tailCsumOK(b) {
		// PASS_SCAN can see stale blocks of a lazily initialised journal.
		if w.pass != passScan {
			return fmt.Errorf("descriptor block %d of transaction %d: checksum fails: %w", w.nextLogBlock, w.nextCommitID, ErrCorrupt)
		}
		w.needCheckTime = true
	}
	if w.pass == passReplay {
		j.replay(w, b)
		return nil
	}
	if w.pass == passScan && j.sb.v1Checksum() && j.endTID == 0 {
		j.calcChecksums(w, b)
		return nil
	}
	j.advance(w, j.countTags(b))
	return nil
}

// commit handles a commit block; only PASS_SCAN looks inside.
func (j *journal) commit(w *walk, b []byte) error {
	if w.pass != passScan {
		w.nextCommitID++
		return nil
	}
	commitTime := be64(b, 48)
	if w.needCheckTime {
		if commitTime >= w.lastCommitTime {
			return fmt.Errorf("transaction %d: invalid checksum: %w", w.nextCommitID, ErrCorrupt)
		}
		return errDone // stale blocks of an older journal: end here
	}
	ok, stop := j.commitOK(w, b)
	if stop {
		return nil
	}
	if !ok {
		if commitTime < w.lastCommitTime {
			return errDone
		}
		j.endTID, j.headBlock = w.nextCommitID, w.headBlock
		if !j.sb.has(incompatAsyncCommit) {
			j.failedCommit = w.nextCommitID
			return nil
		}
	}
	w.lastCommitTime = commitTime
	w.headBlock = w.nextLogBlock
	w.nextCommitID++
	return nil
}

// commitOK checks a commit block's checksum: v1 (crc32_be over the
// transaction), or v2/v3 (crc32c of the block, or of only its header
// for a commit block written partially). stop is the kernel's early
// exit when a v1 failure was already recorded.
func (j *journal) commitOK(w *walk, b []byte) (ok, stop bool) {
	if j.sb.v1Checksum() {
		if j.endTID != 0 {
			j.failedCommit = j.endTID
			return false, true
		}
		found := be32(b, 16)
		match := w.crc32Sum == found && b[12] == crc32ChecksumType && b[13] == crc32ChecksumSize
		unused := b[12] == 0 && b[13] == 0 && found == 0
		if !match && !unused {
			return false, false
		}
		w.crc32Sum = ^uint32(0)
		return true, false
	}
	if !j.sb.csumV23() || j.commitCsumOK(b, len(b)) {
		return true, false
	}
	if j.commitCsumOK(b, commitHeaderSize) {
		j.warn(fmt.Sprintf("incomplete commit block in transaction %d", w.nextCommitID))
		return true, false
	}
	return false, false
}

// commitCsumOK is jbd2_commit_block_csum_verify over the first n bytes
// of b with the rest zero (n < len(b): the _partial variant).
func (j *journal) commitCsumOK(b []byte, n int) bool {
	c := make([]byte, len(b))
	copy(c, b[:n])
	clear(c[16:20])
	return be32(b, 16) == crc32c(j.sb.csumSeed, c)
}

// tailCsumOK is jbd2_descriptor_block_csum_verify (descriptor and
// revoke blocks end in a crc32c of the block).
func (j *journal) tailCsumOK(b []byte) bool {
	if !j.sb.csumV23() {
		return true
	}
	c := append([]byte(nil), b...)
	tail := len(c) - tailSize
	clear(c[tail:])
	return be32(b, tail) == crc32c(j.sb.csumSeed, c)
}

// tags walks a descriptor block's tags the way count_tags and
// jbd2_do_replay do, calling fn with each tag's bytes and flags.
func (j *journal) tags(b []byte, fn func(tag []byte, flags uint16)) {
	tagBytes, size := j.sb.tagBytes(), len(b)
	if j.sb.csumV23() {
		size -= tailSize
	}
	for off := headerSize; off+tagBytes <= size; {
		tag := b[off : off+tagBytes]
		flags := be16(tag, 6)
		fn(tag, flags)
		off += tagBytes
		if flags&flagSameUUID == 0 {
			off += 16
		}
		if flags&flagLastTag != 0 {
			break
		}
	}
}

func (j *journal) countTags(b []byte) int {
	n := 0
	j.tags(b, func([]byte, uint16) { n++ })
	return n
}

// calcChecksums is calc_chksums: the v1 checksum runs over the
// descriptor and the blocks it describes.
func (j *journal) calcChecksums(w *walk, b []byte) {
	n := j.countTags(b)
	w.crc32Sum = crc32BE(w.crc32Sum, b)
	for range n {
		io := w.nextLogBlock
		j.advance(w, 1)
		data, err := j.read(io)
		if err != nil {
			return
		}
		w.crc32Sum = crc32BE(w.crc32Sum, data)
	}
}

// replay is jbd2_do_replay: each tag's block goes to the overlay unless
// revoked; a block whose tag checksum fails is skipped and reported.
func (j *journal) replay(w *walk, b []byte) {
	j.tags(b, func(tag []byte, flags uint16) {
		io := w.nextLogBlock
		j.advance(w, 1)
		p, err := j.phys(io)
		if err != nil {
			j.warn(fmt.Sprintf("recovering journal block %d: %v", io, err))
			j.failed = true
			return
		}
		blocknr := uint64(be32(tag, 0))
		if j.sb.has(incompat64bit) {
			blocknr |= uint64(be32(tag, 8)) << 32
		}
		if rev, ok := j.revoked[blocknr]; ok && !tidGT(w.nextCommitID, rev) {
			j.revokeHits++
			return
		}
		if !j.tagCsumOK(tag, p, w.nextCommitID) {
			j.warn(fmt.Sprintf("invalid checksum recovering data block %d in journal block %d: not replayed, and the kernel would refuse to mount", blocknr, io))
			j.failed = true
			return
		}
		j.overlay[blocknr] = logBlock{phys: p, escape: flags&flagEscape != 0}
		j.replays++
	})
}

// tagCsumOK is jbd2_block_tag_csum_verify.
func (j *journal) tagCsumOK(tag []byte, phys uint64, sequence uint32) bool {
	if !j.sb.csumV23() {
		return true
	}
	data := make([]byte, j.bs)
	if err := j.fs.readBlock(data, phys); err != nil {
		return false
	}
	var seq [4]byte
	binary.BigEndian.PutUint32(seq[:], sequence)
	csum := crc32c(crc32c(j.sb.csumSeed, seq[:]), data)
	if j.sb.has(incompatCsumV3) {
		return be32(tag, 12) == csum
	}
	return be16(tag, 4) == uint16(csum)
}

// scanRevoke is scan_revoke_records.
func (j *journal) scanRevoke(w *walk, b []byte) error {
	count := int(be32(b, 12))
	csumSize := 0
	if j.sb.csumV23() {
		csumSize = tailSize
	}
	if count > len(b)-csumSize {
		return fmt.Errorf("revoke block of transaction %d: %d bytes used: %w", w.nextCommitID, count, ErrCorrupt)
	}
	recordLen := 4
	if j.sb.has(incompat64bit) {
		recordLen = 8
	}
	if w.pass == passScan {
		j.nrRevokes += max(0, count-revokeHeaderSize) / recordLen
		return nil
	}
	for off := revokeHeaderSize; off+recordLen <= count; off += recordLen {
		blocknr := uint64(be32(b, off))
		if recordLen == 8 {
			blocknr = be64(b, off)
		}
		if rev, ok := j.revoked[blocknr]; !ok || tidGT(w.nextCommitID, rev) {
			j.revoked[blocknr] = w.nextCommitID
		}
	}
	return nil
}
