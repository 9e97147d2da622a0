// Package disklayer defines the layer contract of hibdisk: Layer, Disk,
// the optional abilities (OwnReader, ReadCacher), Extent and Range, the
// sector size limits, the sentinel errors every layer wraps, and
// ParentRef, the link from a diff layer to the layer below it. It holds
// no implementation and links no storage engine, as go-containerregistry's
// pkg/v1 holds no image format.
//
// A layer is a sparse disk. Layers stack into differencing chains (package
// diffdisk); each stores only what changed relative to the layer below.
// Implementations are sibling packages: sqlitelayer (the on-disk format,
// one SQLite database per layer), memlayer (in memory, the test oracle)
// and rawlayer (raw image files); layertest is the conformance suite
// every one of them runs.
//
// # Invariants
//
// Row semantics, which every implementation follows (memlayer models
// them, layertest checks them):
//   - Absent: this layer says nothing; a read falls through to the
//     parent, and reads zeros when there is none;
//   - Zero: the range reads as zeros and hides the parent, a tombstone;
//   - Data: the layer stores the bytes.
//
// Durability: after Flush returns nil, every write that completed before
// it survives kill -9 and power loss. Consistency: a read returns every
// write that completed before the read started, flushed or not.
package disklayer
