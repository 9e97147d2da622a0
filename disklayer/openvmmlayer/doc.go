// Package openvmmlayer reads and writes OpenVMM's disklayer_sqlite files
// (microsoft/openvmm, vm/devices/storage/disklayer_sqlite): the SQLite
// disk layer OpenVMM opens with `--disk sql:FILE` and stacks with
// `--disk sqldiff:FILE:LOWER`. Open reads one as a read-only
// disklayer.Layer; Create makes a new one as a disklayer.Disk (what
// `hibdisk convert -O openvmm` writes through).
//
// The files, by job: schema.go (their DDL and the meta row), layer.go
// (Open, reading, Extents), create.go (Create and the write side).
//
// # Invariants
//
// The format, as OpenVMM's source defines it:
//   - a table sectors (sector INTEGER NOT NULL, data BLOB, PRIMARY KEY
//     (sector)), one row per sector: no row says nothing (the layer below
//     shows through, zeros for a base); data NULL is an all-zero sector
//     that hides the layers below; otherwise data is exactly sector_size
//     bytes;
//   - a table meta (metadata TEXT NOT NULL) holding one JSON row
//     {"logically_read_only":bool,"sector_count":u64,"sector_size":u32},
//     fields in that order (serde's order of their DiskMeta struct);
//   - WAL journal mode, no application_id, user_version 0.
//
// What Open refuses, with one error wrapping disklayer.ErrNotLayer (not
// such a file: no sectors or meta table) or disklayer.ErrCorrupt: a meta
// table without exactly one row, metadata that is not that JSON, a
// sector_size that is not a power of two in 512..65536, a size past
// 2^60 bytes, and sectors outside [0, sector_count). A data row of the
// wrong length or type is refused when it is read (checking every row
// at open would read the whole file).
//
// Create writes their DDL text byte for byte (sqlite_master.sql matches a
// file OpenVMM formatted) and the meta JSON as their serde_json prints
// it. Its Disk stores a base layer: an all-zero sector is no row, never a
// NULL row. Close checkpoints the WAL into the file, so a closed file is
// complete on its own and may be copied without its -wal.
//
// Open never writes the file and leaves no -wal or -shm that was not
// there: a file without a WAL is opened immutable (nothing beside it is
// created), which assumes nobody writes it while it is open; a file with
// a WAL (OpenVMM has it open, or a writer stopped without checkpointing)
// is read through that WAL, read-only. The one exception: a -wal without
// its -shm (a copy that left the -shm behind) needs one, and SQLite makes
// it; Open gives it the file's mode and owner, as SQLite's Unix VFS does
// for a root process, so that OpenVMM can still open the file.
package openvmmlayer
