// Package jbd2 replays the journal of an ext3/ext4 filesystem in
// memory, so that an offline reader sees what the kernel would mount
// after recovery, without writing anything.
//
// Replay reads the superblock; when it says needs_recovery, it finds the
// internal journal inode (s_journal_inum) through its extent tree or
// block map, checks the journal superblock (v1 or v2) as jbd2 does, and
// runs fs/jbd2/recovery.c's three passes: PASS_SCAN finds the last
// complete transaction, PASS_REVOKE collects revoke records, PASS_REPLAY
// lays every unrevoked block of transactions [s_sequence, end) over the
// disk in log order. The result is a View, an io.ReaderAt.
//
// # Invariants
//
//   - Nothing is written: a View only reads its base.
//   - The overlay is the kernel's: the same end of log (a missing or
//     failing commit block ends it), the same revoke rule (a revoke in
//     transaction T hides the block in transactions <= T), the same
//     checksum rules for v1 (crc32_be over the transaction), v2 and v3
//     (crc32c of descriptor, revoke and commit blocks and of each data
//     block with its tag), escaped blocks get their magic number back,
//     and the log wraps from s_maxlen to s_first. Where the kernel
//     replays and then refuses to mount (a data block's checksum fails,
//     a corrupt transaction), the View shows what replay left and
//     Info.Warnings says so.
//   - The superblock in a View no longer says needs_recovery (the kernel
//     clears it after replay) and keeps the pre-replay error fields;
//     with metadata_csum its checksum is recomputed.
//   - Replay fails, and nothing is overlaid, exactly where recovery
//     would fail before replaying: an unreadable or invalid journal
//     superblock, unknown journal features, a bad descriptor or revoke
//     checksum past the scan. An external journal (ErrExternalJournal)
//     is not read. Fast commits are not replayed (a warning says so).
//   - Damaged input never panics and never hangs: every length and
//     offset read from disk is checked before use, and a pass that walks
//     more blocks than the journal holds fails (the kernel has no such
//     check and would go round such a log for ever) (FuzzReplay).
package jbd2
