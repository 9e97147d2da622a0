package store

import (
	"errors"
	"runtime/debug"
	"syscall"

	"github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/vfs"
	"golang.org/x/sys/unix"
)

// fileMap serves a file's reads (and, for a database file, writes) from a
// shared mapping of the file instead of one pread or pwrite call each.
//
// Under fio's 4 KiB random writes through the NBD server, pread and
// pwrite were half of the server's CPU: the write transaction reads each
// page it changes that is not cached (SQLite's own mmap_size serves only
// read-only transactions), and a checkpoint reads every frame from the
// WAL and writes it to the database file, one call per page.
//
// A MAP_SHARED mapping is the kernel's page cache itself, so it shows
// what pread would, the writes of other connections and processes
// included, and what is written through it is what pwrite would have
// written; Sync's fsync writes it out like any dirty page. Only bytes past
// the end of the file differ: pread reports them missing and pwrite
// extends the file, while the mapping faults (or, in the last partial
// page, reads zeros and drops writes). So the mapping is used only below
// the size this handle knows the file has (its own writes, Size, reads
// that returned data), and a fault (another handle truncated the file)
// is recovered from by falling back to the system call.
//
// A full filesystem: a store through the mapping into space the
// filesystem has not allocated (a hole) needs a page at fault time, and
// when there is none the fault is SIGBUS. So the mapped part grows only
// by real writes (pwrite allocates or fails with ENOSPC) and by the size
// the file reports (after dbFile.SizeHint, space fallocate allocated); a
// hole below it can only come from a file made sparse outside this
// handle, and
// copyFaultable recovers from that SIGBUS like any other fault, falling
// back to pwrite, which reports ENOSPC. Every failed write for lack of
// space reaches SQLite as SQLITE_FULL (noSpace).
//
// Memory: a page touched through the mapping stays mapped, and counts in
// the process's RssFile (RssShmem on tmpfs), until the mapping goes, so a
// server that read a whole 8 GiB base held 8 GiB of it mapped. Each
// mapping is therefore emptied (MADV_DONTNEED: the pages stay in the page
// cache, dirty ones stay dirty) every mapWindowBytes copied through it:
// a mapping holds at most what its last mapWindowBytes of I/O touched.
//
// Reads and writes use two mappings of the file: a read-only one for
// reads and a writable one for writes. On tmpfs (/dev/shm, where CI and
// the benchmarks keep layers) a read through a writable shared mapping
// faults one page at a time, 8-11 µs a page here, while a read-only
// mapping's fault maps the pages around it too (fault-around): 1.8 µs a
// page read in order, 3.2 µs at random. One read pass of qemu-img bench
// over a 1 GiB layer took 3.7 s cold through the writable mapping. On
// ext4 both kinds cost the same; a page both read and written is then
// faulted in once per mapping.
type fileMap struct {
	limit    int64  // bytes to map
	writable bool   // map for writing too (the file is open read-write)
	stable   bool   // nobody writes the file while it is open (Options.Stable): streams may keep what they read
	data     []byte // read-only mapping, for reads
	wdata    []byte // writable mapping, for writes (writable only)
	failed   bool   // mapping is impossible: always use system calls
	known    int64  // the file is at least this long
	copied   int64  // bytes mapped by reads and written through the mappings since they were last emptied
	// Since the mappings were last emptied (readMapped): the reads of
	// each seenChunk of the file served by pread, and a bit per pmdBytes
	// of it that a read mapped.
	reads, mappedPMD []byte
	// streams: the sequential read streams seen (readAhead).
	streams [readStreams]readStream
	tick    uint64 // ages streams
}

// readStream is a run of reads moving forward through the file.
type readStream struct {
	next  int64  // where the stream's next read is expected
	ahead int64  // the file is asked to be read up to here (WILLNEED)
	hits  int    // reads that continued the stream
	used  uint64 // tick of its last read
	// buf holds the file's bytes from bufOff (streamRead); read-only
	// files only.
	buf    []byte
	bufOff int64
}

// streamBufBytes is how much a stream of a read-only file reads at once
// (streamRead).
const streamBufBytes = 256 << 10

const (
	// readStreams is how many sequential streams a file tracks at once:
	// nbdcopy reads a disk with 4 connections, each in its own part of
	// the disk, and one layer connection may serve several clients.
	readStreams = 8
	// readAheadBytes is how far ahead of a stream the file is asked to be
	// read, in steps of half of it.
	readAheadBytes = 8 << 20
	// streamGap: a read this far past a stream's expected next read (or
	// as far before it) still continues it: a row's leaf and overflow
	// pages are read out of order within a few pages, and rows a client
	// skips leave gaps.
	streamGap = 1 << 20
)

// readAhead notes a read of [off, off+n) and, when it continues a
// stream of reads moving forward through the file, asks the kernel to
// read the next readAheadBytes of the file into the page cache
// (POSIX_FADV_WILLNEED, which starts the reads and returns).
//
// Why: a layer written by convert holds its rows in key order, so a
// client reading the disk in order reads the file in order; but SQLite
// reads it a page at a time, through pread and mapping faults, and the
// kernel's own readahead (per open file, 128 KiB, undone by the
// interleaving of several clients' reads) left a cold sequential read of
// a 4.5 GiB base at 15 s, against 6.5 s before regions were indexed
// lazily, when the first read scanned the whole file in order.
func (m *fileMap) readAhead(f vfs.File, off int64, n int) *readStream {
	m.tick++
	end := off + int64(n)
	var s *readStream
	for i := range m.streams {
		c := &m.streams[i]
		if c.used != 0 && off >= c.next-streamGap && off <= c.next+streamGap {
			s = c
			break
		}
	}
	if s == nil {
		// A new stream replaces the one used longest ago.
		s = &m.streams[0]
		for i := range m.streams {
			if m.streams[i].used < s.used {
				s = &m.streams[i]
			}
		}
		buf := s.buf
		*s = readStream{next: end, ahead: end, used: m.tick, buf: buf[:0]}
		return nil
	}
	s.used = m.tick
	s.next = max(s.next, end)
	s.hits++
	if s.hits < 4 {
		return nil
	}
	if s.ahead-s.next >= readAheadBytes/2 {
		return s
	}
	from := max(s.ahead, s.next)
	if fd, ok := f.(interface{ Fd() uintptr }); ok {
		// Only a hint: an error leaves the reads to the kernel's own
		// readahead.
		_ = unix.Fadvise(int(fd.Fd()), from, readAheadBytes, unix.FADV_WILLNEED)
	}
	s.ahead = from + readAheadBytes
	return s
}

// streamRead serves a read of a read-only file that continues stream s
// from the stream's buffer, refilling it with one pread of
// streamBufBytes (from a little before off: a row's overflow pages lie
// just before its leaf, which SQLite reads first). It reports false if
// the read is not served (the file ends within it, or a read error: the
// caller's pread reports it).
//
// Why: a stream reads a page at a time, and neither a pread per page (2
// µs) nor the mapping helps: the mapping window (mapWindowBytes) empties
// the mapping every 2 GiB, so a read pass over a larger file faults every
// page in again (1.5-2.5 µs a page), and a pass took 5.8-6.2 s over a
// 4.5 GiB base in the page cache where a mapping never emptied took 3.2
// s (and pinned the whole file). A buffer costs a copy from the page
// cache per 64 pages and a memcpy per page, and no mapped pages. Only
// for files nobody changes while they are open (Options.Stable: opened
// read-only under a layer's lock.Stable, which refuses writers, in this
// process too), so the buffer never goes stale; a one-shot reader that
// tolerates a writer (lock.Shared) does not buffer.
func (m *fileMap) streamRead(f vfs.File, s *readStream, p []byte, off int64) bool {
	end := off + int64(len(p))
	if len(s.buf) > 0 && off >= s.bufOff && end <= s.bufOff+int64(len(s.buf)) {
		copy(p, s.buf[off-s.bufOff:])
		return true
	}
	if len(p) > streamBufBytes/2 {
		return false
	}
	if s.buf == nil {
		s.buf = make([]byte, 0, streamBufBytes)
	}
	from := max(0, off-streamBufBytes/8) &^ 4095
	n, _ := f.ReadAt(s.buf[:streamBufBytes], from)
	s.buf, s.bufOff = s.buf[:n], from
	m.known = max(m.known, from+int64(n))
	if end > from+int64(n) {
		return false
	}
	copy(p, s.buf[off-from:])
	return true
}

// mapWindowBytes is how much I/O goes through a mapping before it is
// emptied (fileMap): the bound on the pages it holds mapped. Emptying
// costs a page fault on the next touch of each page (1.6 µs per 4 KiB
// read here): with a 512 MiB window a warm read of a 4.5 GiB layer took
// 1.97 s instead of 1.37-1.75 s, and random reads over a 1 GiB disk
// would refault their whole working set every window. 2 GiB keeps the
// working sets of test disks mapped and bounds a large base. A variable
// only for tests.
var mapWindowBytes int64 = 2 << 30

// used counts n bytes mapped by reads (whole chunks, readMapped) or
// written through the mappings, and empties them once a window's worth
// went through. A file no longer than the window is never
// emptied: its mapping cannot hold more than the window anyway, and a
// row read copies about two pages (its leaf and its overflow page), so
// qemu-img bench reading a 1 GiB layer emptied the mappings on every pass
// and paid 0.5 s of faults on the next (1.2 s a pass instead of 0.7).
func (m *fileMap) used(n int) {
	m.copied += int64(n)
	if m.copied >= mapWindowBytes && m.known > mapWindowBytes {
		for _, data := range [][]byte{m.data, m.wdata} {
			if data != nil {
				unix.Madvise(data, unix.MADV_DONTNEED) // only an optimisation: an error leaves pages mapped
			}
		}
		clear(m.reads)
		clear(m.mappedPMD)
		m.copied = 0
	}
}

// mapped returns the mapping for reads, or for writes, creating it on
// first use, or nil.
func (m *fileMap) mapped(f vfs.File, write bool) []byte {
	at := &m.data
	prot := unix.PROT_READ
	if write {
		at = &m.wdata
		prot |= unix.PROT_WRITE
	}
	if *at != nil || m.failed {
		return *at
	}
	fd, ok := f.(interface{ Fd() uintptr })
	if !ok {
		m.failed = true
		return nil
	}
	data, err := unix.Mmap(int(fd.Fd()), 0, int(m.limit), prot, unix.MAP_SHARED)
	if err != nil {
		m.failed = true
		return nil
	}
	*at = data
	return data
}

// inside reports whether [off, off+n) may be served by the mapping.
func (m *fileMap) inside(off int64, n int) bool {
	end := off + int64(n)
	return off >= 0 && end <= m.known && end <= m.limit
}

// readMapped reports whether a read of [off, off+n) should go through the
// mapping, and counts what that maps towards the window (used).
//
// The first reads of a 64 KiB chunk since the mapping was last emptied
// go to pread instead: a fault maps the 16 pages around the one it
// needs, which costs 13-26 µs here, a waste for reads that touch one or
// two pages in 16 (an index scan reading B-tree leaves, which lie one in
// nine pages between overflow pages: `hibdisk map` of a 1 GiB base spent
// 0.42 s in such faults; a random 4 KiB read over a large base, whose
// leaf and overflow pages are far apart), while pread costs ~2 µs. The
// third read of a chunk maps it: the chunk is in use, and reads through
// the mapping then cost 0.2 µs a page.
//
// A fault may map more than the page it needs: the chunk around it, or,
// where the page cache holds the file in large folios (ext4 and tmpfs on
// recent kernels), a whole 2 MiB. So the window counts 2 MiB for every
// 2 MiB of the file a read first maps: an upper bound on what the
// mapping holds.
func (m *fileMap) readMapped(off int64, n int) bool {
	end := off + int64(n) - 1
	if c := end / seenChunk; c >= int64(len(m.reads)) {
		m.reads = append(m.reads, make([]uint8, max(c+1, int64(len(m.reads)))-int64(len(m.reads)))...)
	}
	if c := off / seenChunk; c == end/seenChunk && m.reads[c] < preadsPerChunk {
		m.reads[c]++
		return false
	}
	if last := end / pmdBytes; last >= int64(len(m.mappedPMD))*8 {
		m.mappedPMD = growBits(m.mappedPMD, last)
	}
	var mapped int
	for c := off / pmdBytes; c <= end/pmdBytes; c++ {
		if !getBit(m.mappedPMD, c) {
			setBit(m.mappedPMD, c)
			mapped += pmdBytes
		}
	}
	if mapped > 0 {
		m.used(mapped)
	}
	return true
}

const (
	preadsPerChunk = 2
	seenChunk      = 64 << 10 // the kernel's fault_around_bytes
	pmdBytes       = 2 << 20  // the most one read fault maps (a PMD)
)

func growBits(b []byte, bit int64) []byte {
	grown := make([]byte, max(bit/8+1, int64(len(b))*2))
	copy(grown, b)
	return grown
}

func getBit(b []byte, i int64) bool { return b[i/8]&(1<<(i%8)) != 0 }
func setBit(b []byte, i int64)      { b[i/8] |= 1 << (i % 8) }

func (m *fileMap) readAt(f vfs.File, p []byte, off int64) (int, error) {
	if s := m.readAhead(f, off, len(p)); s != nil && m.stable && m.streamRead(f, s, p, off) {
		return len(p), nil
	}
	if m.inside(off, len(p)) && m.readMapped(off, len(p)) {
		if data := m.mapped(f, false); data != nil && copyFaultable(p, data[off:]) {
			return len(p), nil
		}
	}
	n, err := f.ReadAt(p, off)
	m.known = max(m.known, off+int64(n))
	return n, err
}

func (m *fileMap) writeAt(f vfs.File, p []byte, off int64) (int, error) {
	if m.writable && m.inside(off, len(p)) {
		if data := m.mapped(f, true); data != nil && copyFaultable(data[off:], p) {
			m.used(len(p))
			return len(p), nil
		}
	}
	n, err := f.WriteAt(p, off)
	m.wrote(off, n)
	return n, noSpace(err)
}

// wrote records that n bytes were written at off.
func (m *fileMap) wrote(off int64, n int) { m.known = max(m.known, off+int64(n)) }

func (m *fileMap) truncate(f vfs.File, size int64) error {
	m.known = min(m.known, size)
	err := f.Truncate(size)
	if err == nil {
		m.known = size
	}
	return err
}

func (m *fileMap) size(f vfs.File) (int64, error) {
	size, err := f.Size()
	if err == nil {
		m.known = size
	}
	return size, err
}

func (m *fileMap) unmap() error {
	var err error
	for _, at := range []*[]byte{&m.data, &m.wdata} {
		if *at != nil {
			err = errors.Join(err, unix.Munmap(*at))
			*at = nil
		}
	}
	return err
}

// copyFaultable copies src to dst, one of which is part of a file
// mapping. It reports false if the copy faulted (the file is shorter than
// the mapping); dst may then be partly written.
func copyFaultable(dst, src []byte) (ok bool) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	copy(dst, src)
	return true
}

// dbFile is a main database file whose reads and writes go through a
// fileMap. Every other operation, and every optional ability of the
// operating system's file (shared memory for the WAL index, SQLite's own
// memory mapping, lock state), is the wrapped file's.
type dbFile struct {
	gatheredFile
	// scratch: the database is a scratch file (Options.Scratch): one
	// connection, no WAL, nobody else reading it. Then writes past the
	// mapped part of the file (the file growing) that continue each
	// other are gathered (gatheredFile): SQLite writes a page per call,
	// and convert's 1.1 GiB output was 290,000 pwrite calls, half its
	// time. Only for scratch files: with gathering on for every database,
	// TestCrashSafety found acknowledged writes missing after a kill -9
	// (a checkpoint's pages lost with the process's memory; the exact
	// path was not pinned down). A scratch file has no WAL and no other
	// reader, and a killed process's scratch file is discarded anyway.
	scratch bool
}

// WriteAt writes a database page. Outside scratch files the writes are
// a checkpoint's, copying pages from the WAL: they go to pwrite, one call
// a page, never through the mapping. A store through the writable
// mapping costs a page fault the first time each page is touched since
// the mapping was last emptied (4.4 µs here against pwrite's 1.4 µs a
// page), and a checkpoint writes each page once: with the stores, the
// faults were 11% of the server's CPU under fio's 1 MiB writes.
func (d *dbFile) WriteAt(p []byte, off int64) (int, error) {
	if !d.scratch {
		n, err := d.File.WriteAt(p, off)
		d.m.wrote(off, n)
		return n, noSpace(err)
	}
	if ok, err := d.gather(p, off); ok || err != nil {
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if d.m.inside(off, len(p)) {
		return d.m.writeAt(d.File, p, off)
	}
	return d.writeGathered(p, off)
}

// SizeHint serves SQLITE_FCNTL_SIZE_HINT (a checkpoint, or a commit
// with the journal off, about to grow the database file) by allocating
// the space with fallocate, as the operating system's VFS does, so that a
// full filesystem is an error now rather than a SIGBUS later. The new
// part does not join the mapped part of the file: it is written with
// pwrite, which puts the data into new page-cache pages in one step,
// while a store through the mapping would take a page fault for each
// (on these virtual machines 4.4 µs a page against 1.4 µs; 110 MiB of
// checkpoint after a hibernate was 0.25 s of faults). Once written, the
// pages join the mapping like any the file had (fileMap.wrote).
func (d *dbFile) SizeHint(size int64) error {
	if err := d.flush(); err != nil {
		return err
	}
	fd, ok := d.File.(interface{ Fd() uintptr })
	if !ok {
		if h, ok := d.File.(vfs.FileSizeHint); ok {
			return noSpace(h.SizeHint(size))
		}
		return nil
	}
	end, err := d.File.Size()
	if err != nil || end >= size {
		return err
	}
	for {
		err = unix.Fallocate(int(fd.Fd()), 0, end, size-end)
		if err != unix.EINTR {
			break
		}
	}
	switch {
	case err == nil:
		return nil
	case err == unix.EOPNOTSUPP:
		if h, ok := d.File.(vfs.FileSizeHint); ok {
			return noSpace(h.SizeHint(size))
		}
		return nil
	}
	return noSpace(err)
}

// SharedMemory forwards the WAL index's shared memory.
func (d *dbFile) SharedMemory() vfs.SharedMemory {
	if f, ok := d.File.(vfs.FileSharedMemory); ok {
		return f.SharedMemory()
	}
	return nil
}

// MemoryMapper forwards SQLite's own memory mapping (mmap_size).
func (d *dbFile) MemoryMapper() vfs.MemoryMapper {
	if f, ok := d.File.(vfs.FileMemoryMapper); ok {
		return f.MemoryMapper()
	}
	return nil
}

// LockState forwards SQLITE_FCNTL_LOCKSTATE.
func (d *dbFile) LockState() vfs.LockLevel {
	if f, ok := d.File.(vfs.FileLockState); ok {
		return f.LockState()
	}
	return vfs.LOCK_NONE
}

// HasMoved forwards SQLITE_FCNTL_HAS_MOVED.
func (d *dbFile) HasMoved() (bool, error) {
	if f, ok := d.File.(vfs.FileHasMoved); ok {
		return f.HasMoved()
	}
	return false, nil
}

// noSpace tags a write's failure for lack of space (ENOSPC, EDQUOT,
// EFBIG) as SQLITE_FULL, as SQLite's own unix VFS does; the operating
// system's VFS of ncruces/go-sqlite3 reports every failed write as
// SQLITE_IOERR_WRITE, and the system error it carries is dropped by the
// time a failed COMMIT returns. The layer engine tells a full disk from
// a failing one by this code.
func noSpace(err error) error {
	if err != nil && (errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG)) {
		return vfs.SystemError(err, sqlite3.FULL)
	}
	return err
}
