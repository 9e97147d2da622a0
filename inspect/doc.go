// Package inspect reads partition tables and filesystems on any layer
// chain without a VM, through github.com/diskfs/go-diskfs: the offline
// counterpart of libguestfs for hibdisk images.
//
// An Image wraps a disklayer.Layer (normally a read-only diffdisk chain
// from diffdisk.OpenImage) in a Storage, reads its MBR or GPT partition
// table, and opens the FAT12/16/32, ext2/3/4, ISO9660 or squashfs
// filesystem on a partition or on the whole disk. FS gives one path
// syntax for all of them and one Entry type for their metadata. Diff
// compares two images: changed disk sector ranges, changed hibernate file
// block ranges, and files added, removed and changed in each filesystem
// present in both.
//
// # Invariants
//
//   - Inspection never writes: Storage.Writable always fails with
//     backend.ErrIncorrectOpenMode, so any write path inside go-diskfs
//     fails instead of changing the image.
//   - Paths are slash-separated and rooted at the filesystem's root
//     whatever the filesystem; "", "/" and "." all name the root; "." and
//     ".." elements are resolved lexically and may not climb above the
//     root. go-diskfs's own path conventions never reach the caller.
//   - A filesystem is identified by its magic numbers before go-diskfs
//     parses it, so "no recognisable filesystem" (ErrNoFilesystem) and "a
//     recognised filesystem whose superblock does not parse" (ErrCorrupt)
//     are different errors.
//   - An ext3/ext4 filesystem whose superblock says needs_recovery (every
//     filesystem mounted when its machine was snapshotted) is shown as the
//     kernel would mount it: its internal journal is replayed in memory by
//     package jbd2 and laid over the disk for go-diskfs, the raw ext4
//     reads and Diff alike, and nothing is written. FS.Warnings is empty
//     after a clean replay; it says why when replay is impossible (an
//     external journal, a damaged journal the kernel would refuse: the
//     disk is then shown as it is) and what the kernel would report when
//     replay ends early (a corrupt transaction, a failing block checksum).
//     Diff treats replayed blocks as changed on both sides.
//   - Partition indexes are the table's own (1-based); index 0 is the
//     whole disk.
package inspect
