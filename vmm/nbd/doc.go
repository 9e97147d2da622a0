// Package nbd is a Network Block Device server (fixed newstyle protocol,
// NetworkBlockDevice/nbd doc/proto.md) that QEMU, libnbd (nbdinfo,
// nbdcopy, nbdsh) and fio accept.
//
// A Server offers one or more Exports, each backed by a Backend: a small
// interface of its own (ReadAt, WriteAt, Zero, Flush, BlockStatus), so
// that this package depends on no storage implementation; package
// vmm/nbddisk adapts a layer chain to it.
//
// Handshake: NBD_OPT_GO and NBD_OPT_INFO (NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE
// always, NBD_INFO_NAME and NBD_INFO_DESCRIPTION on request),
// NBD_OPT_EXPORT_NAME, NBD_OPT_LIST, NBD_OPT_ABORT,
// NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT for exactly "base:allocation"; every other
// option is answered with NBD_REP_ERR_UNSUP. Transmission: READ (with
// OFFSET_HOLE chunks for zero runs when structured replies are on), WRITE,
// DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS; FUA on a write
// flushes before the reply.
//
// # Invariants
//
//   - Every request the server has read is answered exactly once, before
//     the connection closes, unless writing to the client fails.
//   - A reply goes out as one unit (one write or one vectored write) under
//     the connection's reply lock, so replies of concurrent requests never
//     interleave inside a message; their order is the order of completion.
//   - The Backend only sees ranges inside [0, Size()); refused requests
//     (bad flags, out of range, read-only, over MaxRequestLength) never
//     reach it, and a refused WRITE's payload is still read and discarded,
//     so the stream stays in sync and the connection stays usable.
//   - A reply to a WRITE, TRIM or WRITE_ZEROES with FUA, and to FLUSH, is
//     sent only after Backend.Flush returned nil.
//   - Option and request lengths are bounded before anything is allocated:
//     options over 64 KiB are skipped (over 16 MiB end the session),
//     READ and WRITE over MaxRequestLength are refused with EINVAL, and one
//     connection holds at most 64 requests and 64 MiB of payload.
//   - NBD_CMD_DISC and Shutdown finish and answer every request already
//     read before closing; DISC then flushes the export, Shutdown flushes
//     every export.
//
// # Errors
//
// EINVAL: unknown command or flag, READ/BLOCK_STATUS/TRIM/CACHE past the
// end (the spec asks EINVAL for TRIM), READ/WRITE over MaxRequestLength,
// BLOCK_STATUS without base:allocation or of length 0. ENOSPC: WRITE or
// WRITE_ZEROES past the end. EPERM: WRITE, TRIM or WRITE_ZEROES on a
// read-only export. Backend errors are mapped as described under Errno.
// Zero-length READ, WRITE, TRIM, WRITE_ZEROES and CACHE inside the export
// succeed without calling the backend.
package nbd
