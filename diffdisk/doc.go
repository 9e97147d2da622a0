// Package diffdisk stacks layers into differencing chains: a Disk is a
// list of layers [top, ..., base] that reads like one disk. It also holds
// the chain operations the CLI calls: Open, OpenImage, Create, Commit,
// Rebase, Compare, Map and Resize.
//
// # Reading and writing
//
// A read resolves every byte top-down: the topmost layer that stores the
// sector (data or a tombstone) supplies it; a sector no layer stores reads
// as zeros. A layer smaller than the layer above it reads as zeros past
// its end, without looking further down (qcow2 backing files behave the
// same way).
//
// Writes go only to the top. A write or Zero that covers part of a sector
// reads that sector through the whole chain, merges, and writes the full
// sector to the top (read-modify-write through the stack), so bytes of a
// lower layer outside the written range survive. Zero writes tombstones,
// which hide lower data, over the sectors where something could show
// through (the top holds a row, or a lower layer has data); where the
// chain reads zeros already it writes nothing, so trimming a fresh diff
// layer adds no rows. An all-zero write is stored as tombstones by the
// top layer's own row rule.
//
// In read-cache mode (Options.ReadCache) every read also copies what it
// found below into the top through disklayer.ReadCacher.FillAbsent, which
// never overwrites a sector the top already holds, so a cache fill racing
// a guest write cannot bring stale data back.
//
// # Invariants
//
//   - Layers below the top never change while a Disk is open. Open opens
//     them read-only; callers of New and Compose promise it. The Disk
//     relies on it to keep an in-memory index of the lower layers, so a
//     read of data at the bottom of a deep chain costs one query, not one
//     per layer.
//   - Only the Disk writes to its top layer while it is open. The index
//     tracks which top sectors may hold rows (a bitmap updated after each
//     write), so a read goes straight to the one layer that supplies it.
//     A bit may be set for a sector the top does not hold (a tombstone the
//     layer chose not to keep because nothing showed through); reading the
//     top there returns zeros, which is also what the chain below holds.
//   - Partial-sector read-modify-writes are serialised, so two writes to
//     different bytes of one sector both survive.
//
// # Chains on disk
//
// A diff layer records its parent as a path relative to the child's
// directory, the parent's format ("hibdisk" or "raw") and its identity: a
// hibdisk parent's uuid and size, a raw parent's size and content digest
// (rawlayer.Digest). Open verifies every link and refuses a missing or
// changed parent with an error wrapping disklayer.ErrParentMismatch that
// names what was recorded and what was found. A raw file is never guessed
// as a backing file: Create and Rebase need BackingFormat "raw" for it.
package diffdisk
