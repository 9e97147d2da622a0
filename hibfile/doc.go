// Package hibfile is the hibernate file of a layer chain: a machine
// snapshot's metadata (snapshot, processes, memory map, open files, signal
// handlers) in the layer database, and its content (memory pages, register
// blobs) in the chain's hibernate file, the hibernate_blocks tables
// stacked like the disk.
//
// The schema (tables, indexes, views, the migration from the seed's v0
// tables) is in internal/schema; sqlitelayer applies it as layer schema
// version 2 when a layer is created or opened writable.
//
// Producers: Capture reads live Linux processes from /proc; Import reads
// the JSON format of Export (for producers that are not Linux). Both end in
// Save. Consumers: Open and Chain.Latest give the newest snapshot visible
// in a chain, with its process tree, per-process rows, blob reads and a
// restore plan; Compare diffs two snapshots; Check and Repair verify the
// metadata (also from `hibdisk check`).
//
// # Invariants
//
//   - One snapshot per layer. Save writes it in one transaction on the top
//     layer of a chain: the metadata rows and the hibernate blocks commit
//     together or not at all.
//   - Every blob range (a mapping's [blob_offset, blob_offset+size), a
//     process's [registers_offset, registers_offset+registers_size)) lies
//     in [0, blob_size) of its snapshot, and ranges do not overlap.
//   - Save stores only blocks whose content differs from the chain below
//     (compared by content, block by block): a snapshot layer over an older
//     one holds only the pages that changed. Layout keeps a mapping's
//     blob_offset from the previous snapshot when the same process has the
//     same mapping, so unchanged pages land on unchanged blocks.
//   - The newest snapshot visible in a chain is the one in the topmost
//     layer that holds one; its blobs are read through the chain from that
//     layer down, so layers above it never change what it reads.
//   - Addresses are stored as signed 64-bit integers; kernel addresses
//     (>= 2^63, such as [vsyscall]) are not recorded.
package hibfile
