package sqlitelayer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/ncruces/go-sqlite3"
	"golang.org/x/sys/unix"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/lock"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Bulk writes a new base layer whose data arrives in order, as `hibdisk
// convert` produces it, by laying out the sectors table's B-tree pages
// itself instead of inserting rows through SQLite.
//
// Why: convert of 1 GiB of data on tmpfs took 1.6-2.2 s through SQLite
// (one INSERT per 4 KiB sector: 1.1-1.3 s of user time in the B-tree code
// and the copies between Go and SQLite's sandbox), qemu-img 0.4-0.5 s.
// Rows that arrive sorted by key need none of SQLite's work: each leaf is
// filled once, left to right, and the interior pages are known when the
// leaves are, so the pages are written once, in file order.
//
// The file is an ordinary layer. SQLite creates it with its schema and
// layer row (an empty sectors table), and closes it; Bulk appends the
// sectors table's overflow, leaf and interior pages after the last page,
// writes the tree's root over the table's (empty) root page, and sets the
// database size in the header, as SQLite would have. The page format
// (https://www.sqlite.org/fileformat2.html, "B-tree Pages"): a table leaf
// page is an 8-byte header, the cell pointers in key order, and the cells
// packed at the page's end; a cell is the payload size and the rowid as
// varints, the payload's first bytes, and, when the payload does not fit,
// the number of its first overflow page. The payload is the record: a
// header (its size, then serial type 0 for the rowid alias `sector` and
// 2n+12 for an n-byte blob) followed by the blob. Interior pages hold a
// child pointer and the child's largest key per cell, and the rightmost
// child in the header. Layers have no reserved bytes per page (no
// checksums in the page), and a Bulk layer has auto_vacuum=NONE, as a
// Scratch layer has (no pointer map), until `hibdisk compact`.
//
// A Bulk layer is private until Close returns: nobody else knows its
// path (convert writes it under a temporary name), and the layer's lock
// is held meanwhile. Close syncs it. Nothing but sectors in increasing
// order can be written; a failure leaves a file to delete.
type Bulk struct {
	path       string
	held       *lock.Lock
	f          *os.File
	sectorSize int
	size       int64 // disk size in bytes

	pageSize int    // = usable size (no reserved bytes)
	root     uint32 // the sectors table's root page
	next     uint32 // the next page number to write

	// maxLocal, minLocal: SQLite's bounds on the payload kept in a leaf
	// cell (fileformat2, "Cell Payload Overflow Pages").
	maxLocal, minLocal int

	// partial: a sector of which only a part has arrived (writes need not
	// be aligned); partialKey is its number, -1 if none.
	partial    []byte
	partialKey int64
	lastKey    int64 // the last sector stored, -1 at first

	// The leaf being filled: cells in key order (cell bytes, concatenated
	// in leafCells; ends in leafEnds), its first and last keys.
	leafCells []byte
	leafEnds  []int
	leafLast  int64
	// children of the level above the leaves: each finished leaf.
	leaves []bulkChild
	// runs: the allocation summary of what was stored (every row is
	// data), written into the layer at Close; nil once it would pass
	// maxBulkRuns (the layer then has no summary, and is mapped from its
	// rows).
	runs     []summaryRun
	manyRuns bool

	how    BulkOptions
	out    []byte // pages to write, starting at page outFirst
	outPg  uint32
	writer *bulkWriter
	err    error
}

// BulkOptions say how a Bulk layer's pages reach the disk: by default
// through the page cache, each batch's writeback started as soon as it
// is written (sync_file_range), and the file synced at Close.
type BulkOptions struct {
	// Direct writes with O_DIRECT where the filesystem takes it.
	Direct bool
	// Unsynced skips the syncs: Close returns once the kernel has the
	// pages, and a crash or power loss before it writes them back may
	// leave the layer incomplete. That is qemu-img convert's default
	// (cache=unsafe), for outputs that a failed run simply makes again.
	Unsynced bool
}

// bulkChild is a finished page of the tree: its number and its largest
// key.
type bulkChild struct {
	page uint32
	last int64
}

// bulkOutBytes is how much Bulk gathers into one write: as convert's
// reads (diffdisk's convertChunk), small enough that the pages are
// still in the CPU's cache when they are written.
const bulkOutBytes = 256 << 10

// CreateBulk makes a new layer at path (which must not exist) for data
// written in increasing order (see Bulk), written as how says.
func CreateBulk(path string, opts CreateOptions, how BulkOptions) (b *Bulk, err error) {
	if opts.Parent != nil || opts.Scratch || opts.ReadCache {
		return nil, fileError("create layer", path, fmt.Errorf("a bulk-written layer is a base without a read cache: %w", disklayer.ErrInvalid))
	}
	info, err := newInfo(opts)
	if err != nil {
		return nil, fileError("create layer", path, err)
	}
	var root, pages, pageSize, reserve int64
	layout := func(conn *sqlite3.Conn) error {
		for _, q := range []struct {
			sql string
			v   *int64
		}{
			{"SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = 'sectors'", &root},
			{"PRAGMA page_count", &pages},
			{"PRAGMA page_size", &pageSize},
		} {
			var err error
			if *q.v, err = queryInt(conn, q.sql); err != nil {
				return err
			}
		}
		return nil
	}
	// The file is complete (its WAL folded in) and synced when this
	// returns, and nothing has it open.
	if err := createDatabaseFile(path, info, layout); err != nil {
		return nil, fileError("create layer", path, mapStoreError(err))
	}
	held, err := lock.Acquire(path, lock.Exclusive)
	if err != nil {
		return nil, fileError("create layer", path, err)
	}
	defer func() {
		if err != nil {
			held.Release()
		}
	}()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fileError("create layer", path, err)
	}
	var hdr [100]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		f.Close()
		return nil, fileError("create layer", path, fmt.Errorf("read header: %w", err))
	}
	if reserve = int64(hdr[20]); reserve != 0 || root < 2 || pages < root {
		f.Close()
		return nil, fmt.Errorf("create layer %q: unexpected database layout (reserved bytes %d, sectors root %d of %d pages)", path, reserve, root, pages)
	}
	w, err := newBulkWriter(f, how.Direct, !how.Unsynced)
	if err != nil {
		f.Close()
		return nil, fileError("create layer", path, err)
	}
	u := int(pageSize)
	b = &Bulk{
		path: path, held: held, f: f,
		sectorSize: info.SectorSize, size: info.DiskSize,
		pageSize: u, root: uint32(root), next: uint32(pages) + 1,
		maxLocal: u - 35, minLocal: (u-12)*32/255 - 23,
		partialKey: -1, lastKey: -1,
		writer: w, how: how,
	}
	b.outPg = b.next
	return b, nil
}

// SectorSize returns the layer's sector size.
func (b *Bulk) SectorSize() int { return b.sectorSize }

// WriteAt stores p at off. Writes must come in increasing order and not
// overlap; what is not written reads as zeros. Sectors that are all zero
// are stored all the same (the caller skips them).
func (b *Bulk) WriteAt(p []byte, off int64) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if off < 0 || off+int64(len(p)) > b.size {
		return 0, fmt.Errorf("write %q: [%d, %d) is outside the %d-byte disk: %w", b.path, off, off+int64(len(p)), b.size, disklayer.ErrInvalid)
	}
	ss := int64(b.sectorSize)
	n := len(p)
	for len(p) > 0 {
		key, in := off/ss, int(off%ss)
		if key <= b.lastKey {
			return 0, b.fail(fmt.Errorf("write %q at %d: a bulk-written layer takes writes in increasing order: %w", b.path, off, disklayer.ErrInvalid))
		}
		if in == 0 && len(p) >= b.sectorSize && b.partialKey < 0 {
			b.addRow(key, p[:b.sectorSize])
			p, off = p[b.sectorSize:], off+ss
			continue
		}
		if b.partialKey >= 0 && b.partialKey != key {
			b.flushPartial()
		}
		if b.partialKey < 0 {
			if b.partial == nil {
				b.partial = make([]byte, b.sectorSize)
			}
			clear(b.partial)
			b.partialKey = key
		}
		c := copy(b.partial[in:], p)
		p, off = p[c:], off+int64(c)
		if in+c == b.sectorSize {
			b.flushPartial()
		}
	}
	return n, b.err
}

func (b *Bulk) flushPartial() {
	if b.partialKey >= 0 {
		key := b.partialKey
		b.partialKey = -1
		b.addRow(key, b.partial)
	}
}

func (b *Bulk) fail(err error) error {
	if b.err == nil {
		b.err = err
	}
	return b.err
}

// addRow appends the row (key, data) to the tree. key is larger than
// every key before it.
func (b *Bulk) addRow(key int64, data []byte) {
	b.lastKey = key
	switch n := len(b.runs); {
	case n > 0 && b.runs[n-1].start+b.runs[n-1].count == key:
		b.runs[n-1].count++
	case b.manyRuns:
	case n == maxBulkRuns:
		b.runs, b.manyRuns = nil, true
	default:
		b.runs = append(b.runs, summaryRun{start: key, count: 1})
	}
	n := len(data)
	st := uint64(2*n + 12)
	hdrLen := 2 + varintLen(st) // header size byte, serial type 0, blob's type
	pay := hdrLen + n
	local := pay
	if pay > b.maxLocal {
		k := b.minLocal + (pay-b.minLocal)%(b.pageSize-4)
		local = k
		if k > b.maxLocal {
			local = b.minLocal
		}
	}
	cellLen := varintLen(uint64(pay)) + varintLen(uint64(key)) + local
	if local < pay {
		cellLen += 4
	}
	// A leaf holds its 8-byte header, 2 bytes of pointer per cell and
	// the cells.
	if len(b.leafEnds) > 0 && 8+2*(len(b.leafEnds)+1)+len(b.leafCells)+cellLen > b.pageSize {
		b.finishLeaf(false)
	}
	// The payload: record header, then the blob; the part past local
	// goes to overflow pages, written now (before the leaf that points at
	// them).
	var rec [12]byte
	rec[0] = byte(hdrLen)
	rec[1] = 0
	putVarint(rec[2:], st)
	cell := b.leafCells
	cell = appendVarint(cell, uint64(pay))
	cell = appendVarint(cell, uint64(key))
	if local == pay {
		cell = append(cell, rec[:hdrLen]...)
		cell = append(cell, data...)
	} else {
		cell = append(cell, rec[:hdrLen]...)
		cell = append(cell, data[:local-hdrLen]...)
		first := b.next
		cell = binary.BigEndian.AppendUint32(cell, first)
		per := b.pageSize - 4
		for from := local; from < pay; from += per {
			to := min(pay, from+per)
			pg := b.newPage()
			next := uint32(0)
			if to < pay {
				next = b.next
			}
			binary.BigEndian.PutUint32(pg, next)
			n := copy(pg[4:], data[from-hdrLen:to-hdrLen]) // local >= minLocal > hdrLen
			clear(pg[4+n:])
		}
	}
	b.leafCells = cell
	b.leafEnds = append(b.leafEnds, len(cell))
	b.leafLast = key
}

// newPage returns the next page of the output (not zeroed: the caller
// writes all of it), numbered b.next,
// and advances b.next, past the lock-byte page: b.next is never that
// page, so that it can be used as the number of the page to come.
func (b *Bulk) newPage() []byte {
	if len(b.out)+2*b.pageSize > bulkOutBytes {
		b.flushOut() // room for both: pg must not be handed to the writer
	}
	pg := b.appendPage()
	if b.next == b.lockPage() {
		clear(b.appendPage()) // left empty
	}
	return pg
}

// appendPage adds a page to the output, as the buffer holds it (not
// zeroed: clearing each page before it was filled cost 3-5% of a
// convert's CPU), and advances b.next.
func (b *Bulk) appendPage() []byte {
	if len(b.out)+b.pageSize > bulkOutBytes {
		b.flushOut()
	}
	if b.out == nil {
		b.out = b.writer.buffer()
	}
	start := len(b.out)
	b.out = b.out[:start+b.pageSize]
	pg := b.out[start:]
	b.next++
	return pg
}

// lockPage is the page holding the byte at offset 1 GiB, where SQLite's
// file locks live (PENDING_BYTE): SQLite never puts anything in it, and
// its integrity check reports a reference to it.
func (b *Bulk) lockPage() uint32 { return uint32(pendingByte/b.pageSize) + 1 }

// pendingByte is SQLite's PENDING_BYTE, the first of the bytes it locks.
const pendingByte = 0x40000000

// flushOut hands the gathered pages to the writer.
func (b *Bulk) flushOut() {
	if len(b.out) == 0 {
		return
	}
	if err := b.writer.write(b.out, int64(b.outPg-1)*int64(b.pageSize), true); err != nil {
		b.fail(fmt.Errorf("write %q: %w", b.path, err))
	}
	b.outPg += uint32(len(b.out) / b.pageSize)
	b.out = nil
}

// finishLeaf writes the leaf being filled: appended, or, if it is the
// tree's only page (last), as the root.
func (b *Bulk) finishLeaf(last bool) {
	var pg []byte
	if last {
		pg = make([]byte, b.pageSize)
	} else {
		b.leaves = append(b.leaves, bulkChild{b.next, b.leafLast})
		pg = b.newPage()
	}
	b.fillPage(pg, 0x0d, b.leafCells, b.leafEnds, 0)
	if last {
		b.writeRoot(pg)
	}
	b.leafCells, b.leafEnds = b.leafCells[:0], b.leafEnds[:0]
}

// fillPage lays out a B-tree page of kind flag (0x0d table leaf, 0x05
// table interior) holding cells (concatenated, ending at ends), with the
// rightmost child right (interior pages).
func (b *Bulk) fillPage(pg []byte, flag byte, cells []byte, ends []int, right uint32) {
	clear(pg)
	hdr := 8
	if flag == 0x05 {
		hdr = 12
		binary.BigEndian.PutUint32(pg[8:], right)
	}
	pg[0] = flag
	binary.BigEndian.PutUint16(pg[3:], uint16(len(ends)))
	top := b.pageSize
	start := 0
	for i, end := range ends {
		c := cells[start:end]
		top -= len(c)
		copy(pg[top:], c)
		binary.BigEndian.PutUint16(pg[hdr+2*i:], uint16(top))
		start = end
	}
	if top == 65536 {
		top = 0
	}
	binary.BigEndian.PutUint16(pg[5:], uint16(top))
}

// writeRoot writes pg over the sectors table's root page.
func (b *Bulk) writeRoot(pg []byte) {
	b.flushOut()
	if err := b.writer.write(pg, int64(b.root-1)*int64(b.pageSize), false); err != nil {
		b.fail(fmt.Errorf("write %q: %w", b.path, err))
	}
}

// Flush reports the first error; the layer becomes durable at Close.
func (b *Bulk) Flush() error { return b.err }

// Close finishes the tree (interior pages, root, header), syncs the file
// and releases the layer's lock. The layer is then an ordinary one.
func (b *Bulk) Close() error {
	if b.f == nil {
		return b.err
	}
	defer func() {
		b.f.Close()
		b.f = nil
		b.held.Release()
	}()
	b.flushPartial()
	switch {
	case len(b.leafEnds) > 0 && len(b.leaves) == 0:
		b.finishLeaf(true) // one leaf: it is the root
	case len(b.leafEnds) > 0:
		b.finishLeaf(false)
	}
	level := b.leaves
	for len(level) > 1 {
		level = b.interiorLevel(level)
	}
	if len(level) == 1 && level[0].page != b.root {
		b.fail(fmt.Errorf("close layer %q: bulk tree of one leaf not written as the root", b.path))
	}
	b.flushOut()
	if err := b.writer.close(); err != nil {
		b.fail(fmt.Errorf("write %q: %w", b.path, err))
	}
	if b.err != nil {
		return b.err
	}
	if err := b.finishHeader(); err != nil {
		return b.fail(fmt.Errorf("close layer %q: %w", b.path, err))
	}
	if !b.how.Unsynced {
		if err := b.f.Sync(); err != nil {
			return b.fail(fmt.Errorf("close layer %q: sync: %w", b.path, err))
		}
	}
	if !b.manyRuns {
		if err := storeRuns(b.path, b.runs, !b.how.Unsynced); err != nil {
			return b.fail(fmt.Errorf("close layer %q: allocation summary: %w", b.path, mapStoreError(err)))
		}
	}
	return nil
}

// maxBulkRuns bounds the runs Bulk keeps for the summary (24 bytes each):
// a disk more fragmented than that gets none.
const maxBulkRuns = 1 << 20

// storeRuns writes runs (all data, in order) as the allocation summary of
// the layer at path, which this process holds exclusively, in one
// transaction, synced if synced is set.
func storeRuns(path string, runs []summaryRun, synced bool) error {
	conn, err := store.Open(path, store.Options{Migrations: schema.History, ReadableFrom: schema.ReadableFrom})
	if err != nil {
		return err
	}
	if !synced {
		err = conn.Exec("PRAGMA synchronous = OFF")
	}
	if err == nil {
		err = conn.Exec("BEGIN IMMEDIATE")
	}
	if err == nil {
		err = insertRuns(conn, runs)
	}
	if err == nil {
		err = conn.Exec("UPDATE layer SET allocation_generation = generation; COMMIT")
	}
	if err != nil {
		conn.Close()
		return err
	}
	return conn.Close()
}

// insertRuns stores runs in the (empty) allocation table.
func insertRuns(conn *sqlite3.Conn, runs []summaryRun) error {
	insert, _, err := conn.Prepare("INSERT INTO allocation (start, count, kind) VALUES (?1, ?2, ?3)")
	if err != nil {
		return err
	}
	defer insert.Close()
	for _, r := range runs {
		kind := runData
		if r.zero {
			kind = runZero
		}
		insert.BindInt64(1, r.start)
		insert.BindInt64(2, r.count)
		insert.BindInt(3, kind)
		if err := insert.Exec(); err != nil {
			return err
		}
	}
	return nil
}

// interiorLevel writes the interior pages over children (at least two)
// and returns them (the level above); a level of one page is written as
// the root. The children are spread evenly over as few pages as hold
// them, so that no page has fewer than two (a page holds a cell, child
// and largest key, for all but its last child, which is its rightmost).
func (b *Bulk) interiorLevel(children []bulkChild) []bulkChild {
	perCell := 2 + 4 + varintLen(uint64(children[len(children)-1].last))
	most := (b.pageSize-12)/perCell + 1 // children a page holds
	pages := (len(children) + most - 1) / most
	var up []bulkChild
	var cells []byte
	var ends []int
	for p := range pages {
		kids := children[p*len(children)/pages : (p+1)*len(children)/pages]
		cells, ends = cells[:0], ends[:0]
		for _, c := range kids[:len(kids)-1] {
			cells = binary.BigEndian.AppendUint32(cells, c.page)
			cells = appendVarint(cells, uint64(c.last))
			ends = append(ends, len(cells))
		}
		right := kids[len(kids)-1]
		if pages == 1 {
			pg := make([]byte, b.pageSize)
			b.fillPage(pg, 0x05, cells, ends, right.page)
			b.writeRoot(pg)
			return []bulkChild{{b.root, right.last}}
		}
		up = append(up, bulkChild{b.next, right.last})
		b.fillPage(b.newPage(), 0x05, cells, ends, right.page)
	}
	return up
}

// finishHeader records the database's new size in its header, with the
// change counter moved on and the size marked valid for it, as a commit
// of SQLite's would.
func (b *Bulk) finishHeader() error {
	var hdr [100]byte
	if _, err := b.f.ReadAt(hdr[:], 0); err != nil {
		return err
	}
	counter := binary.BigEndian.Uint32(hdr[24:]) + 1
	binary.BigEndian.PutUint32(hdr[24:], counter)
	binary.BigEndian.PutUint32(hdr[28:], b.next-1)
	binary.BigEndian.PutUint32(hdr[92:], counter)
	_, err := b.f.WriteAt(hdr[:], 0)
	return err
}

// varintLen is the length of v as an SQLite varint.
func varintLen(v uint64) int {
	n := 1
	for v > 0x7f && n < 9 {
		v >>= 7
		n++
	}
	return n
}

// appendVarint appends v as an SQLite varint (big-endian, 7 bits a byte
// with the high bit set on all but the last; a ninth byte holds 8 bits).
func appendVarint(p []byte, v uint64) []byte {
	var buf [9]byte
	n := putVarint(buf[:], v)
	return append(p, buf[:n]...)
}

func putVarint(p []byte, v uint64) int {
	if v > 1<<56-1 {
		p[8] = byte(v)
		v >>= 8
		for i := 7; i >= 0; i-- {
			p[i] = byte(v&0x7f) | 0x80
			v >>= 7
		}
		return 9
	}
	var tmp [9]byte
	n := 0
	for {
		tmp[n] = byte(v&0x7f) | 0x80
		n++
		v >>= 7
		if v == 0 {
			break
		}
	}
	tmp[0] &= 0x7f
	for i := range n {
		p[i] = tmp[n-1-i]
	}
	return n
}

// bulkWriter writes Bulk's gathered pages on goroutines of their own
// (so that writes are in flight while the next buffer fills): through the page cache, each write's writeback started at
// once (writeBehind, for an output synced at Close), or with O_DIRECT
// where asked for and the filesystem takes it.
//
// Buffered is the default because it measured fastest (2026-12-05, ext4,
// 2 cores; docs/scale-work.md): 1 GiB of data converted in 0.90 s with
// write-behind, 1.18-1.29 s with O_DIRECT and 1.19-2.06 s buffered
// without write-behind, where the final fsync waited for the whole
// file; 4 GiB in 2.9-3.0 s against 4.5 s with O_DIRECT. An earlier
// session had O_DIRECT ahead, when the guest's page-cache memory was
// untouched and each first copy into it cost a hypervisor fault
// (qemu-img, buffered, paid the same). Where O_DIRECT is refused
// (tmpfs, or a write the device cannot take aligned), writes are
// buffered.
type bulkWriter struct {
	f      *os.File
	fd     int
	direct *os.File // f's file opened with O_DIRECT, or nil
	// writeBehind: start the writeback of buffered writes as they go,
	// of [behind, behindEnd) once it is writeBehindBytes long (one
	// writer goroutine, since buffered).
	writeBehind       bool
	behind, behindEnd int64
	writers           int // goroutines writing
	jobs              chan bulkJob
	done              chan error // each writer's first error, when it ends
	free              chan []byte
	bufs              [][]byte // every buffer, to unmap
	err               error
	ended             bool
}

type bulkJob struct {
	p      []byte
	off    int64
	pooled bool // p came from buffer
}

const (
	// directWriters is how many direct writes are in flight at most: a
	// disk here took 1 MiB direct writes at 864 MB/s one at a time,
	// 977 MB/s four at a time (fio). Buffered writes to one file take
	// its inode lock in turn, so they have one writer: two spent 6% of
	// a convert spinning on the lock.
	directWriters = 2
)

// newBulkWriter writes f's pages, directly where direct is set and the
// filesystem takes it; buffered writes start their writeback at once
// if writeBehind is set.
func newBulkWriter(f *os.File, direct, writeBehind bool) (*bulkWriter, error) {
	w := &bulkWriter{f: f, fd: int(f.Fd()), writeBehind: writeBehind, writers: 1, jobs: make(chan bulkJob, 1)}
	if direct {
		if d, err := os.OpenFile(f.Name(), os.O_WRONLY|unix.O_DIRECT, 0); err == nil {
			w.direct, w.writers = d, directWriters
		}
	}
	buffers := w.writers + 2 // one filling, one waiting, one per writer
	w.done, w.free = make(chan error, w.writers), make(chan []byte, buffers)
	for range buffers {
		// Mapped, so page-aligned, as O_DIRECT wants.
		buf, err := unix.Mmap(-1, 0, bulkOutBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			w.unmap()
			return nil, fmt.Errorf("bulk write buffers: %w", err)
		}
		w.bufs = append(w.bufs, buf)
		w.free <- buf[:0]
	}
	for range w.writers {
		go func() {
			var err error
			for j := range w.jobs {
				if err == nil {
					err = w.writeAt(j.p, j.off, j.pooled)
				}
				if j.pooled {
					w.free <- j.p[:0]
				}
			}
			w.done <- err
		}()
	}
	return w, nil
}

// writeAt writes p at off, directly if p is one of the mapped buffers
// and the file and device take it.
func (w *bulkWriter) writeAt(p []byte, off int64, pooled bool) error {
	if w.direct != nil && pooled {
		_, err := w.direct.WriteAt(p, off)
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
		// Not aligned for this device: buffered, like everything else.
	}
	_, err := w.f.WriteAt(p, off)
	if err == nil && w.writeBehind {
		// Start the writeback of each MiB written rather than leave it
		// all to Close's sync (a hint: the sync makes it durable either
		// way). Measured per 256 KiB write, per MiB and per 4 MiB, inline
		// or on a goroutine of its own: the same within the noise.
		if off != w.behindEnd {
			w.behind, w.behindEnd = off, off // the root page, written out of order
		}
		w.behindEnd += int64(len(p))
		if w.behindEnd-w.behind >= writeBehindBytes {
			_ = unix.SyncFileRange(w.fd, w.behind, w.behindEnd-w.behind, unix.SYNC_FILE_RANGE_WRITE)
			w.behind = w.behindEnd
		}
	}
	return err
}

// writeBehindBytes is how much bulkWriter writes before it starts the
// writeback of it.
const writeBehindBytes = 1 << 20

// buffer returns an empty buffer of bulkOutBytes capacity.
func (w *bulkWriter) buffer() []byte { return <-w.free }

// write queues p (a buffer from buffer, which goes back to the pool once
// written, or any other slice, which must not change until close) for
// writing at off.
func (w *bulkWriter) write(p []byte, off int64, pooled bool) error {
	if w.ended {
		return errors.New("bulk writer closed")
	}
	w.jobs <- bulkJob{p, off, pooled}
	return nil
}

// close waits for the queued writes, releases the buffers and returns
// the first error.
func (w *bulkWriter) close() error {
	if !w.ended {
		w.ended = true
		close(w.jobs)
		for range w.writers {
			if err := <-w.done; err != nil && w.err == nil {
				w.err = err
			}
		}
		if w.direct != nil {
			if err := w.direct.Close(); err != nil && w.err == nil {
				w.err = err
			}
		}
		w.unmap()
	}
	return w.err
}

func (w *bulkWriter) unmap() {
	for _, b := range w.bufs {
		_ = unix.Munmap(b)
	}
	w.bufs = nil
}

// queryInt runs a query returning one integer.
func queryInt(conn *sqlite3.Conn, sql string) (int64, error) {
	st, _, err := conn.Prepare(sql)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	if !st.Step() {
		if err := st.Err(); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%s: no result", sql)
	}
	return st.ColumnInt64(0), nil
}
