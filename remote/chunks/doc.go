// Package chunks reads blobs of an object store lazily, a chunk at a
// time, and verified: the read side of lazy remote bases (issue 20).
//
// A sealed layer is stored as one blob, named by its digest; its
// manifest gives the blob's size, a chunk size (a power of two from
// MinChunkSize) and the SHA-256 of every chunk. A Reader serves the blob
// as an io.ReaderAt over a Source (the store: a ranged GET, or a file)
// and a Cache (a directory shared by every process of the machine, keyed
// by chunk digest).
//
// A blob whose manifest also has page digests (a sealed layer pushed
// with them) is read by a PageReader instead: the same invariants, with
// "page" for "chunk"; its page digests come through a Reader of the
// page-digest blob, and the Cache keeps its pages in span files (see
// SpanBytes), where a page is cached when its bytes match its digest.
//
// # Invariants
//
//   - No byte reaches a caller before the whole chunk holding it was
//     hashed and matched its digest: bytes from the Source, from the
//     Cache and from the Reader's memory alike. A chunk that does not
//     match is an error naming the blob and the chunk (ErrMismatch),
//     never data, and is not cached.
//   - The Cache never hands out a torn or damaged chunk: files appear
//     under their final name only by rename of a complete file, and every
//     read from the directory is verified again (a file torn by a power
//     loss, which rename without fsync allows, is removed and fetched
//     again). So the Cache does not fsync: it may lose chunks on power
//     loss, never serve wrong ones.
//   - Processes that need the same chunk at the same time fetch it once:
//     the first takes the chunk's flock, fetches, verifies and stores it;
//     the others wait for the lock and read the file.
//   - A Source that fails is retried with exponential back-off; once it
//     has failed for Options.MaxWait without a success in between, reads
//     that need it fail with an error wrapping ErrUnavailable, which
//     wraps syscall.EIO (so the NBD server answers EIO). ErrGone (the
//     blob is missing or changed) and ErrMismatch are not retried.
package chunks
