package sqlitelayer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Direct reads: the sectors table's rows read straight from the database
// file's B-tree in a read-only mapping, without SQLite, when the file
// holds every committed page.
//
// Why: a 64 KiB read through the NBD server was about 52 µs of server
// CPU, a third of it SQLite stepping 16 rows in its sandbox (each row's
// overflow page copied in through the VFS, then out again), and on two
// cores qemu-img bench's sequential 64 KiB reads were CPU-bound: 0.87x
// qemu-nbd (docs/scale-work.md, which also has the spare-connection
// attempt this replaces). Reading the B-tree in Go is one copy from the
// page cache into the reply, and no lock shared with writes.
//
// When the file is enough: SQLite's committed pages live in the WAL
// until a checkpoint copies them into the file. A direct read is allowed
// only while
//   - clean: a checkpoint copied the whole WAL and nothing was committed
//     since (every commit clears it, from the WAL hook, inside the
//     commit);
//   - the engine is not dirty: nothing acknowledged is uncommitted (no
//     open write batch, nothing held by write-back: see engine.dirty);
//   - the engine has not failed, and no write of the table was lost.
//
// A write acknowledged before a read began set dirty before it returned,
// and dirty is cleared only after the commit that made it durable, which
// cleared clean first; so the read either takes SQLite's path or finds a
// file a later checkpoint completed. A read that finds the file not
// clean while nothing is dirty asks the checkpointer for a checkpoint,
// so a layer that stops being written soon reads directly.
//
// Checkpoints are the only writes to the file (commits append to the
// WAL; the connection's automatic checkpoint is off), and every
// checkpoint of an open layer holds mu exclusively, so a direct read
// (holding it shared) never sees a page change or the file shrink under
// it; readers only try the lock and fall back to SQLite while a
// checkpoint runs. Anything the reader does not understand (a page type,
// a row that is not one block, a fault of the mapping) makes it fall back
// to SQLite's path, which reports real damage as ErrCorrupt.
//
// Only layers opened for writing read directly (layer.go Open says why
// the parents of a chain do not yet).
type direct struct {
	mu     sync.RWMutex // direct reads: shared; checkpoints, remaps, Close: exclusive
	file   *os.File
	data   []byte // read-only mapping of the whole file; guarded by mu
	closed bool   // guarded by mu

	pageSize, usable int    // page size; bytes of it used (without reserved bytes)
	root             uint32 // the sectors table's root page
	blockSize        int

	clean    atomic.Bool   // the file holds every committed page
	commits  atomic.Uint64 // commits seen (WAL hook)
	behind   atomic.Int32  // large reads that found the file behind since the last commit
	asked    atomic.Bool   // a read asked for a checkpoint since the last commit
	disabled atomic.Bool   // the file did not parse: SQLite's path only
	copied   atomic.Int64  // bytes read through data since it was last emptied
}

// directMinBytes is the smallest read served directly. A small random
// read touches a leaf and an overflow page the mapping may not hold yet,
// and a fault maps 64 KiB around each (13-26 µs here), where SQLite's
// path reads them with pread (internal/store readMapped): fio's 4 KiB
// random reads of a 1 GiB layer were ~10% slower directly (three
// interleaved 4 s runs each at QD1 and QD32). Reads of 32 KiB and more
// (qemu-img bench's 64 KiB, a guest's readahead) use what the faults
// map.
const directMinBytes = 32 << 10

// directAskAfter is how many large reads must find the file behind the
// WAL, with no commit between them, before one asks for a checkpoint.
const directAskAfter = 16

// directWindowBytes: the mapping of a file larger than this is emptied
// (MADV_DONTNEED; the pages stay in the page cache) every this many
// bytes read through it, as the VFS's own mappings are (internal/store
// mapWindowBytes), so that file pages mapped stay bounded by recent
// reads.
const directWindowBytes = 2 << 30

// newDirect maps path for direct reads of the table rooted at root.
func newDirect(path string, root uint32, blockSize int) (*direct, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	d := &direct{file: f, root: root, blockSize: blockSize}
	var hdr [100]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("direct reads of %q: read header: %w", path, err)
	}
	d.pageSize = int(binary.BigEndian.Uint16(hdr[16:]))
	if d.pageSize == 1 {
		d.pageSize = 65536
	}
	d.usable = d.pageSize - int(hdr[20])
	if d.pageSize < 512 || d.pageSize&(d.pageSize-1) != 0 || d.usable < 480 {
		f.Close()
		return nil, fmt.Errorf("direct reads of %q: page size %d, %d usable: not a database this reader knows", path, d.pageSize, d.usable)
	}
	if err := d.remapLocked(); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// remapLocked maps the file as long as it is now. Called with mu held
// exclusively (or before d is shared).
func (d *direct) remapLocked() error {
	st, err := d.file.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if int64(len(d.data)) == size {
		return nil
	}
	if d.data != nil {
		unix.Munmap(d.data)
		d.data = nil
	}
	if size == 0 {
		return nil
	}
	if int64(int(size)) != size {
		return errors.New("file too large to map")
	}
	data, err := unix.Mmap(int(d.file.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map %s: %w", d.file.Name(), err)
	}
	d.data = data
	d.copied.Store(0)
	return nil
}

// committed is called by every commit of the engine's connection (the
// WAL hook, inside the commit).
func (d *direct) committed() {
	d.clean.Store(false)
	d.commits.Add(1)
	d.behind.Store(0)
	d.asked.Store(false)
}

// beginCheckpoint is called before a checkpoint of the layer runs; it
// returns what endCheckpoint needs.
func (d *direct) beginCheckpoint() uint64 {
	d.mu.Lock()
	return d.commits.Load()
}

// endCheckpoint is called after it: complete reports that the checkpoint
// copied every frame of the WAL. If nothing was committed meanwhile the
// file is clean.
func (d *direct) endCheckpoint(before uint64, complete bool) {
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	if err := d.remapLocked(); err != nil {
		d.disabled.Store(true)
		return
	}
	if complete && d.commits.Load() == before {
		d.clean.Store(true)
	}
}

// close unmaps the file; reads in progress finish first.
func (d *direct) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.closed = true
	if d.data != nil {
		unix.Munmap(d.data)
		d.data = nil
	}
	d.file.Close()
}

// read fills p from the rows overlapping [off, off+len(p)) as readRows
// does, gaps included, and reports whether it could; when it could not,
// p and gaps are as they were before, for SQLite's path to fill.
func (d *direct) read(p []byte, off int64, gaps *[]span) (ok bool) {
	if !d.mu.TryRLock() {
		return false
	}
	defer d.mu.RUnlock()
	if d.closed || d.data == nil || !d.clean.Load() || d.disabled.Load() {
		return false
	}
	n := 0
	if gaps != nil {
		n = len(*gaps)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			ok = false // a fault of the mapping
		}
		if !ok && gaps != nil {
			*gaps = (*gaps)[:n]
		}
	}()
	if !d.readRange(p, off, gaps) {
		return false
	}
	// A file no larger than the window is never emptied: its pages
	// would only be faulted in again (the VFS's mappings do the same).
	if len(d.data) > directWindowBytes && d.copied.Add(int64(len(p))) > directWindowBytes {
		d.copied.Store(0)
		unix.Madvise(d.data, unix.MADV_DONTNEED)
	}
	return true
}

// page returns page pgno, or nil if the mapping does not hold it.
func (d *direct) page(pgno uint32) []byte {
	start := int64(pgno-1) * int64(d.pageSize)
	if pgno == 0 || start+int64(d.pageSize) > int64(len(d.data)) {
		return nil
	}
	return d.data[start : start+int64(d.pageSize)]
}

// Page types of table B-trees.
const (
	pageTableInterior = 0x05
	pageTableLeaf     = 0x0d
)

// seek finds the leaf cell with the smallest key >= key: the leaf, its
// header offset, the cell's index (the leaf's cell count when no cell of
// that leaf qualifies), and bound: every key in that leaf is <= bound,
// every key in later leaves > bound (hasBound false: it is the last
// leaf). ok is false if the tree does not parse.
func (d *direct) seek(key int64) (leaf []byte, hdr, idx int, bound int64, hasBound, ok bool) {
	pgno := d.root
	for depth := 0; depth < 32; depth++ {
		page := d.page(pgno)
		if page == nil {
			return nil, 0, 0, 0, false, false
		}
		hdr = 0
		if pgno == 1 {
			hdr = 100
		}
		n := int(binary.BigEndian.Uint16(page[hdr+3:]))
		switch page[hdr] {
		case pageTableLeaf:
			// The first cell whose key is >= key.
			lo, hi := 0, n
			for lo < hi {
				mid := (lo + hi) / 2
				k, ok := d.leafKey(page, hdr, mid)
				if !ok {
					return nil, 0, 0, 0, false, false
				}
				if k < key {
					lo = mid + 1
				} else {
					hi = mid
				}
			}
			return page, hdr, lo, bound, hasBound, true
		case pageTableInterior:
			lo, hi := 0, n
			for lo < hi {
				mid := (lo + hi) / 2
				_, k, ok := d.interiorCell(page, hdr, mid)
				if !ok {
					return nil, 0, 0, 0, false, false
				}
				if k < key {
					lo = mid + 1
				} else {
					hi = mid
				}
			}
			if lo < n {
				child, k, _ := d.interiorCell(page, hdr, lo)
				pgno, bound, hasBound = child, k, true
			} else {
				pgno = binary.BigEndian.Uint32(page[hdr+8:])
			}
		default:
			return nil, 0, 0, 0, false, false
		}
	}
	return nil, 0, 0, 0, false, false
}

// cellOffset is the offset of cell i of a page whose header is at hdr.
func cellOffset(page []byte, hdr, headerLen, i int) (int, bool) {
	p := hdr + headerLen + 2*i
	if p+2 > len(page) {
		return 0, false
	}
	c := int(binary.BigEndian.Uint16(page[p:]))
	return c, c < len(page)
}

func (d *direct) interiorCell(page []byte, hdr, i int) (child uint32, key int64, ok bool) {
	c, ok := cellOffset(page, hdr, 12, i)
	if !ok || c+5 > len(page) {
		return 0, 0, false
	}
	k, n := sqliteVarint(page[c+4:])
	return binary.BigEndian.Uint32(page[c:]), int64(k), n > 0
}

func (d *direct) leafKey(page []byte, hdr, i int) (int64, bool) {
	c, ok := cellOffset(page, hdr, 8, i)
	if !ok {
		return 0, false
	}
	_, n := sqliteVarint(page[c:])
	if n == 0 {
		return 0, false
	}
	k, m := sqliteVarint(page[c+n:])
	return int64(k), m > 0
}

// readRange reads blocks [off/bs, (off+len(p)-1)/bs] into p (see read).
func (d *direct) readRange(p []byte, off int64, gaps *[]span) bool {
	bs := int64(d.blockSize)
	end := off + int64(len(p))
	first, last := off/bs, (end-1)/bs
	covered := off
	key := first
	for key <= last {
		leaf, hdr, i, bound, hasBound, ok := d.seek(key)
		if !ok {
			return false
		}
		n := int(binary.BigEndian.Uint16(leaf[hdr+3:]))
		for ; i < n; i++ {
			c, ok := cellOffset(leaf, hdr, 8, i)
			if !ok {
				return false
			}
			payload, a := sqliteVarint(leaf[c:])
			if a == 0 {
				return false
			}
			rowid, b := sqliteVarint(leaf[c+a:])
			if b == 0 {
				return false
			}
			k := int64(rowid)
			if k > last {
				key = last + 1
				break
			}
			blockOff := k * bs
			start := max(blockOff, off)
			if start > covered {
				clear(p[covered-off : start-off])
				if gaps != nil {
					*gaps = append(*gaps, span{covered, start - covered})
				}
			}
			stop := min(blockOff+bs, end)
			if !d.copyBlob(leaf, c+a+b, int64(payload), p[start-off:stop-off], start-blockOff) {
				return false
			}
			covered = stop
			key = k + 1
		}
		if i == n {
			if !hasBound {
				break
			}
			key = max(key, bound+1)
		}
	}
	if covered < end {
		clear(p[covered-off:])
		if gaps != nil {
			*gaps = append(*gaps, span{covered, end - covered})
		}
	}
	return true
}

// copyBlob copies dst from the row whose payload (P bytes) begins at
// leaf[at]: the record (sector INTEGER PRIMARY KEY, data BLOB) whose
// data is one block, or NULL (a tombstone: zeros), from byte within of
// the block. It reports false for anything else.
func (d *direct) copyBlob(leaf []byte, at int, payload int64, dst []byte, within int64) bool {
	u := int64(d.usable)
	maxLocal := u - 35
	local := payload
	if payload > maxLocal {
		minLocal := (u-12)*32/255 - 23
		local = minLocal + (payload-minLocal)%(u-4)
		if local > maxLocal {
			local = minLocal
		}
	}
	if int64(at)+local > int64(len(leaf)) {
		return false
	}
	rec := leaf[at : int64(at)+local]
	// The record header: its length, then the serial types of the
	// rowid alias (stored as NULL) and of data.
	hlen, n := sqliteVarint(rec)
	if n == 0 || hlen > uint64(len(rec)) || hlen < 3 {
		return false
	}
	t0, n0 := sqliteVarint(rec[n:])
	if n0 == 0 || t0 != 0 {
		return false
	}
	t1, n1 := sqliteVarint(rec[n+n0:])
	if n1 == 0 || uint64(n+n0+n1) != hlen {
		return false
	}
	if t1 == 0 { // NULL: a tombstone
		clear(dst)
		return true
	}
	if t1 < 12 || t1%2 != 0 || int64(t1-12)/2 != int64(d.blockSize) {
		return false
	}
	// The blob is bytes [hlen, hlen+blockSize) of the payload: the local
	// part, then the overflow pages (a next-page number, then usable-4
	// bytes each).
	from := int64(hlen) + within
	to := from + int64(len(dst))
	if to > payload {
		return false
	}
	w := 0
	if from < local {
		w = copy(dst, rec[from:min(to, local)])
		from += int64(w)
	}
	if from == to {
		return true
	}
	if int64(at)+local+4 > int64(len(leaf)) {
		return false
	}
	next := binary.BigEndian.Uint32(leaf[int64(at)+local:])
	pos := local // payload offset of the current overflow page's content
	for hops := 0; from < to; hops++ {
		page := d.page(next)
		if page == nil || hops > 1<<16 {
			return false
		}
		chunk := u - 4
		if from < pos+chunk {
			lo, hi := from-pos, min(to-pos, chunk)
			w += copy(dst[w:], page[4+lo:4+hi])
			from = pos + hi
		}
		pos += chunk
		next = binary.BigEndian.Uint32(page)
	}
	return true
}

// sqliteVarint decodes SQLite's variable-length integer (big-endian,
// 7 bits a byte, the ninth byte all 8): the value and its length, 0 if
// b is too short.
func sqliteVarint(b []byte) (uint64, int) {
	var v uint64
	for i := 0; i < 8; i++ {
		if i >= len(b) {
			return 0, 0
		}
		v = v<<7 | uint64(b[i]&0x7f)
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	if len(b) < 9 {
		return 0, 0
	}
	return v<<8 | uint64(b[8]), 9
}

// readDirect reads p at off of t from the file when direct reads may
// serve it (see direct), reporting whether they did.
func (t *blockTable) readDirect(p []byte, off int64, gaps *[]span) bool {
	e := t.e
	d := e.direct
	if d == nil || len(p) < directMinBytes || t != e.tables[0] || e.dirty.Load() || e.failed.Load() || t.hasLost.Load() {
		return false
	}
	if !d.clean.Load() {
		// Nothing uncommitted, but the WAL holds pages the file lacks:
		// have the checkpointer copy them, once per commit, and only
		// when reads keep coming without writes (a read phase): a
		// guest mixing reads and flushes would otherwise get a
		// checkpoint, and its fsync, after every flush.
		if e.ckpt != nil && d.behind.Add(1) == directAskAfter && d.asked.CompareAndSwap(false, true) {
			e.ckpt.request()
		}
		return false
	}
	return d.read(p, off, gaps)
}

// cleanLocked clears dirty after a commit unless write-back holds data
// not yet applied: every write that returned is then committed. It
// looks under write-back's lock, under which write-back sets dirty as it
// accepts a write, so a write accepted meanwhile keeps it set. Called
// with the engine's lock held.
func (e *engine) cleanLocked() {
	if e.wb == nil {
		e.dirty.Store(false)
		return
	}
	e.wb.mu.Lock()
	if len(e.wb.pending) == 0 {
		e.dirty.Store(false)
	}
	e.wb.mu.Unlock()
}

// startDirect sets up direct reads of the sectors table (tables[0]).
// clean says whether the file already holds every committed page. A
// layer that cannot read directly reads through SQLite only.
func (e *engine) startDirect(clean bool) error {
	root, err := sectorsRoot(e)
	if err != nil {
		return err
	}
	d, err := newDirect(e.path, root, e.tables[0].blockSize)
	if err != nil {
		return err
	}
	d.clean.Store(clean)
	e.direct = d
	if e.ckpt != nil {
		e.ckpt.guard.Store(d)
	}
	return nil
}

// sectorsRoot reads the sectors table's root page.
func sectorsRoot(e *engine) (uint32, error) {
	stmt, _, err := e.conn.Prepare(`SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'sectors'`)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	if !stmt.Step() {
		if err := stmt.Err(); err != nil {
			return 0, err
		}
		return 0, errors.New("no sectors table")
	}
	return uint32(stmt.ColumnInt64(0)), nil
}
