// Package disklayer defines the layer contract of hibdisk (Layer, Disk,
// Extent, the sentinel errors) and implements its on-disk format: one
// SQLite database per layer.
//
// A layer is a sparse disk. Layers stack into differencing chains (package
// diffdisk); each stores only what changed relative to the layer below.
// Implementations: the SQLite layer in this package, memlayer (in memory,
// the test oracle) and rawlayer (raw image files).
//
// # Invariants
//
// Row semantics, the same for the sectors table (the disk) and the
// hibernate_blocks table (the hibernate file):
//   - no row: this layer says nothing; a read falls through to the parent,
//     and reads zeros when there is none (Absent);
//   - data IS NULL: the sector reads as zeros and hides the parent, a
//     tombstone (Zero);
//   - otherwise data is exactly one sector (Data). An all-zero sector is
//     never stored as data: it becomes a tombstone when the layer has a
//     parent, and no row when nothing below could show through.
//
// Durability: writes are batched in an open transaction; Flush commits it
// with synchronous=FULL, so everything written before a completed Flush
// survives kill -9 and power loss. The journal is WAL.
//
// Consistency: a read returns every write that completed before the read
// started, whether or not it has been flushed. A failed commit is returned
// by Flush and by every later request; writes are never silently lost.
//
// Identity: a diff layer records its parent's uuid and size (and, for a
// raw parent, a digest of its size and sampled content); opening the
// chain refuses a parent that does not match, naming both sides.
package disklayer
