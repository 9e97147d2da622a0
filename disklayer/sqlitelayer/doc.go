// Package sqlitelayer implements hibdisk's on-disk layer format: one
// SQLite database per layer, a disklayer.Disk (File) over its sectors
// table and a second one (File.Hibernate) over hibernate_blocks. It also
// holds the format's consistency checker (Check, Repair, the TableChecks
// other packages register for their tables) and its schema migration.
//
// The files, by job: layer.go (File, Create, Open, IsLayer, the
// options), reader.go (OpenReaderAt: a sealed layer read from its
// bytes, e.g. a remote blob), engine.go (the connection a File and its Hibernate view
// share: transactions, commit, the sticky failure), errors.go (engine
// errors to the contract's sentinels), row.go (the layer row: write,
// read, validate), metadata.go (SetParent, Resize, SetReadOnly,
// SetLabel), stats.go, table.go (one table's row semantics), tx.go
// (Update and View for the packages that own other tables), absorb.go,
// empty.go, generation.go, nospace.go, writeback.go, checkpoint.go,
// reclaim.go (free space given back while the layer is open), compact.go,
// wal.go, schema.go (Migrate), and the checker: check.go, check_tables.go.
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
// A full filesystem is the exception to "every later request": a commit
// that fails for lack of space (disklayer.ErrNoSpace, which wraps ENOSPC)
// loses the writes of its batch, those since the last completed Flush,
// and the layer stays usable. Data flushed before keeps being read. A
// read of a sector whose write was lost fails with disklayer.ErrWriteLost
// and never returns the sector's older content (Extents maps it as Data),
// until a write of the whole sector replaces it. The loss is reported by
// the table's next Flush (the one whose commit failed, or the first one
// after a commit that failed on its own when a batch reached its bound),
// and until that Flush returns it, writes to the table are refused with
// it: no Flush can succeed while a write it should cover was lost. After
// it, writes are accepted again and fail (at the latest on the next
// Flush) for as long as the filesystem stays full. The lost set lives in
// memory: after reopening, those sectors read their older content. Other
// commit failures stay sticky.
//
// Space: a layer made by Create (auto_vacuum=INCREMENTAL) gives free
// pages back to the filesystem while a writer holds it open, in
// transactions of their own that change no content (reclaim.go); a crash
// in the middle loses nothing.
//
// Identity: a diff layer records its parent's uuid and size (and, for a
// raw parent, a digest of its size and sampled content); opening the
// chain refuses a parent that does not match, naming both sides.
package sqlitelayer
