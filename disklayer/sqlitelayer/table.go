package sqlitelayer

import (
	"bytes"
	"errors"
	"fmt"
	"iter"
	"strings"
	"sync/atomic"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
)

// blockTable is the sparse-disk engine over one table of a layer
// (sectors, or hibernate_blocks): rows keyed by block number, data one
// block long or NULL for a tombstone. It implements Disk, OwnReader and
// ReadCacher. Every method takes the engine's mutex for its whole
// request, so requests are atomic with respect to each other.
type blockTable struct {
	e         *engine
	table     string // "sectors" or "hibernate_blocks"
	key       string // "sector" or "block"
	blockSize int
	size      atomic.Int64
	detached  bool // the Hibernate view was closed; guarded by e.mu

	// Prepared once, reused by every request.
	selectRange *sqlite3.Stmt // rows with key in [?1, ?2], ascending
	// selectKinds: key and NULL-ness in [?1, ?2], at most ?3 rows. It asks
	// typeof(data), which SQLite answers from the cell header; data IS
	// NULL loads the value, overflow pages and all (a chain index over
	// 4 GiB of data: 2.1 s of scan instead of 0.49 s).
	selectKinds    *sqlite3.Stmt
	upsert         *sqlite3.Stmt // store (?1, ?2), replacing a row
	upsertRun      *sqlite3.Stmt // store upsertRunLen rows (?1, ?2), (?3, ?4), ...
	insertAbsent   *sqlite3.Stmt // store (?1, ?2) only where there is no row
	deleteRange    *sqlite3.Stmt // drop rows in [?1, ?2]
	deleteData     *sqlite3.Stmt // drop rows holding data in [?1, ?2]
	tombstoneRange *sqlite3.Stmt // make every row holding data in [?1, ?2] a tombstone
	countKinds     *sqlite3.Stmt // rows and tombstones in [?1, ?2]
	// The allocation summary's queries (summary.go): nil unless the
	// table is a read-only layer's sectors with the summary's schema.
	selectRuns, summaryValid *sqlite3.Stmt

	block []byte // read-modify-write buffer, one block; guarded by e.mu

	// After a commit failed for lack of space (nospace.go);
	// guarded by e.mu. batch: the blocks the open batch wrote. lost:
	// blocks whose writes were lost, sorted. lostErr: the loss this
	// table's next Flush reports.
	batch   []blockSpan
	lost    []blockSpan
	lostErr error
	// hasLost mirrors len(lost) > 0 for direct reads (direct.go).
	hasLost atomic.Bool
}

// zeroBlock is compared against to recognise all-zero blocks.
var zeroBlock [disklayer.MaxSectorSize]byte

func newBlockTable(e *engine, table, key string, blockSize int, size int64) (*blockTable, error) {
	t := &blockTable{e: e, table: table, key: key, blockSize: blockSize, block: make([]byte, blockSize)}
	t.size.Store(size)
	for _, s := range []struct {
		stmt **sqlite3.Stmt
		sql  string
	}{
		{&t.selectRange, "SELECT " + key + ", data FROM " + table + " WHERE " + key + " BETWEEN ?1 AND ?2 ORDER BY " + key},
		{&t.selectKinds, "SELECT " + key + ", typeof(data) = 'null' FROM " + table + " WHERE " + key + " BETWEEN ?1 AND ?2 ORDER BY " + key + " LIMIT ?3"},
		{&t.upsert, "INSERT INTO " + table + " (" + key + ", data) VALUES (?1, ?2) ON CONFLICT (" + key + ") DO UPDATE SET data = excluded.data"},
		{&t.upsertRun, "INSERT INTO " + table + " (" + key + ", data) VALUES " + valuesList(upsertRunLen) + " ON CONFLICT (" + key + ") DO UPDATE SET data = excluded.data"},
		{&t.insertAbsent, "INSERT INTO " + table + " (" + key + ", data) VALUES (?1, ?2) ON CONFLICT (" + key + ") DO NOTHING"},
		{&t.deleteRange, "DELETE FROM " + table + " WHERE " + key + " BETWEEN ?1 AND ?2"},
		{&t.deleteData, "DELETE FROM " + table + " WHERE " + key + " BETWEEN ?1 AND ?2 AND typeof(data) <> 'null'"},
		{&t.tombstoneRange, "UPDATE " + table + " SET data = NULL WHERE " + key + " BETWEEN ?1 AND ?2 AND typeof(data) <> 'null'"},
		{&t.countKinds, "SELECT count(*), total(typeof(data) = 'null') FROM " + table + " WHERE " + key + " BETWEEN ?1 AND ?2"},
	} {
		var err error
		if *s.stmt, _, err = e.conn.Prepare(s.sql); err != nil {
			t.closeStatements()
			return nil, fmt.Errorf("prepare %s: %w", s.sql, err)
		}
	}
	e.tables = append(e.tables, t)
	return t, nil
}

func (t *blockTable) closeStatements() {
	for _, s := range []*sqlite3.Stmt{t.selectRange, t.selectKinds, t.upsert, t.upsertRun, t.insertAbsent, t.deleteRange, t.deleteData, t.tombstoneRange, t.countKinds, t.selectRuns, t.summaryValid} {
		if s != nil {
			s.Close()
		}
	}
}

// Size is the number of bytes the table addresses.
func (t *blockTable) Size() int64 { return t.size.Load() }

// SectorSize is the block size.
func (t *blockTable) SectorSize() int { return t.blockSize }

func (t *blockTable) usable(op string) error {
	if err := t.e.usable(op); err != nil {
		return err
	}
	if t.detached {
		return fmt.Errorf("%s %q %s: %w", op, t.e.path, t.table, disklayer.ErrClosed)
	}
	return nil
}

func (t *blockTable) writable(op string) error {
	if err := t.usable(op); err != nil {
		return err
	}
	if t.lostErr != nil {
		return fmt.Errorf("%s %q %s: refused until a flush has reported lost writes: %w", op, t.e.path, t.table, t.lostErr)
	}
	return t.e.writable(op)
}

// wrap adds the operation, file and table to an error from SQLite.
func (t *blockTable) wrap(op string, off int64, err error) error {
	return fmt.Errorf("%s %q %s at %d: %w", op, t.e.path, t.table, off, mapStoreError(err))
}

// ReadAt reads the table's own content; absent blocks and tombstones read
// as zeros.
func (t *blockTable) ReadAt(p []byte, off int64) (int, error) {
	if err := disklayer.CheckRange(off, int64(len(p)), t.Size()); err != nil {
		return 0, fmt.Errorf("read %q %s: %w", t.e.path, t.table, err)
	}
	if len(p) > 0 && t.readDirect(p, off, nil) {
		return len(p), nil
	}
	first, last := t.blockRange(off, len(p))
	t.e.lockFor(t, first, last)
	defer t.e.mu.Unlock()
	if err := t.usable("read"); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := t.e.beginReadLocked("read"); err != nil {
		return 0, err
	}
	if err := t.readLocked(p, off, nil); err != nil {
		return 0, err
	}
	return len(p), nil
}

// blockRange returns the first and last block of n bytes at off (the
// first block twice when n is 0).
func (t *blockTable) blockRange(off int64, n int) (first, last int64) {
	bs := int64(t.blockSize)
	return off / bs, (off + max(int64(n), 1) - 1) / bs
}

// span is a byte range.
type span struct{ off, len int64 }

// ReadOwn implements OwnReader: like ReadAt, and it reports the ranges
// the table has no rows for. absent runs after the engine's lock is
// released, so it may call back into this layer.
func (t *blockTable) ReadOwn(p []byte, off int64, absent func(off, length int64) error) error {
	if err := disklayer.CheckRange(off, int64(len(p)), t.Size()); err != nil {
		return fmt.Errorf("read %q %s: %w", t.e.path, t.table, err)
	}
	var gapsBuf [8]span
	gaps := gapsBuf[:0]
	var err error
	if len(p) == 0 || !t.readDirect(p, off, &gaps) {
		first, last := t.blockRange(off, len(p))
		t.e.lockFor(t, first, last)
		err = t.usable("read")
		if err == nil && len(p) > 0 {
			err = t.e.beginReadLocked("read")
		}
		if err == nil && len(p) > 0 {
			err = t.readLocked(p, off, &gaps)
		}
		t.e.mu.Unlock()
	}
	if err != nil {
		return err
	}
	for _, g := range gaps {
		if err := absent(g.off, g.len); err != nil {
			return err
		}
	}
	return nil
}

// readLocked fills p from the rows overlapping [off, off+len(p)) with one
// range query, zero-filling what has no data. If gaps is not nil, the
// ranges without rows are appended to it, clipped to the request.
func (t *blockTable) readLocked(p []byte, off int64, gaps *[]span) error {
	bs := int64(t.blockSize)
	end := off + int64(len(p))
	first, last := off/bs, (end-1)/bs
	if len(t.lost) > 0 {
		if key, ok := t.lostIn(first, last); ok {
			return t.lostError(key)
		}
	}
	stmt := t.selectRange
	stmt.BindInt64(1, first)
	stmt.BindInt64(2, last)
	covered := off // p is filled up to here
	for stmt.Step() {
		key := stmt.ColumnInt64(0)
		blockOff := key * bs
		start := max(blockOff, off)
		if start > covered {
			clear(p[covered-off : start-off])
			if gaps != nil {
				*gaps = append(*gaps, span{covered, start - covered})
			}
		}
		stop := min(blockOff+bs, end)
		data := stmt.ColumnRawBlob(1)
		switch {
		case len(data) == t.blockSize:
			copy(p[start-off:stop-off], data[start-blockOff:stop-blockOff])
		case len(data) == 0 && stmt.ColumnType(1) == sqlite3.NULL:
			clear(p[start-off : stop-off])
		default:
			typ := stmt.ColumnType(1)
			stmt.Reset()
			return fmt.Errorf("read %q %s %s %d: row holds %d bytes (%s), want %d: %w", t.e.path, t.table, t.key, key, len(data), typ, t.blockSize, disklayer.ErrCorrupt)
		}
		covered = stop
	}
	if err := stmt.Reset(); err != nil {
		return t.wrap("read", off, err)
	}
	if covered < end {
		clear(p[covered-off:])
		if gaps != nil {
			*gaps = append(*gaps, span{covered, end - covered})
		}
	}
	return nil
}

// WriteAt writes p at off. Whole blocks are stored in one prepared-statement
// loop; partial blocks at either end are read, merged and written back.
// All-zero blocks become tombstones (the layer has a parent) or no rows.
func (t *blockTable) WriteAt(p []byte, off int64) (int, error) {
	if err := disklayer.CheckRange(off, int64(len(p)), t.Size()); err != nil {
		return 0, fmt.Errorf("write %q %s: %w", t.e.path, t.table, err)
	}
	bs := int64(t.blockSize)
	if t.e.wb != nil && t.e.wb.t == t && len(p) > 0 && off%bs == 0 && int64(len(p))%bs == 0 && t.e.wb.write(p, off) {
		return len(p), nil
	}
	t.e.lock()
	defer t.e.mu.Unlock()
	if err := t.writable("write"); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := t.e.beginLocked("write"); err != nil {
		return 0, err
	}
	err := t.writeLocked(p, off)
	if err := t.e.afterWriteLocked("write", int64(len(p)), err); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *blockTable) writeLocked(p []byte, off int64) error {
	bs := int64(t.blockSize)
	end := off + int64(len(p))
	// Partial block at the start (which may also be the end).
	if head := off % bs; head != 0 || end-off < bs {
		blockOff := off - head
		n := min(bs-head, end-off)
		if err := t.mergeBlockLocked(blockOff, head, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	// Partial block at the end.
	if tail := end % bs; tail != 0 && end-off > 0 {
		if err := t.mergeBlockLocked(end-tail, 0, p[len(p)-int(tail):]); err != nil {
			return err
		}
		p = p[:len(p)-int(tail)]
	}
	return t.storeBlocksLocked(p, off/bs)
}

// mergeBlockLocked writes part into the block at blockOff, at offset
// within the block, keeping the rest of the block's own content.
func (t *blockTable) mergeBlockLocked(blockOff, within int64, part []byte) error {
	if err := t.readLocked(t.block, blockOff, nil); err != nil {
		return err
	}
	copy(t.block[within:], part)
	return t.storeBlocksLocked(t.block, blockOff/int64(t.blockSize))
}

// storeBlocksLocked stores whole blocks starting at block number first.
func (t *blockTable) storeBlocksLocked(p []byte, first int64) error {
	bs := t.blockSize
	return t.storeLocked(len(p)/bs,
		func(i int) int64 { return first + int64(i) },
		func(i int) []byte { return p[i*bs : (i+1)*bs] })
}

// storeLocked stores n whole blocks, block i being numbered key(i) with
// content data(i); keys ascend. Runs of data blocks go to upsertLocked;
// runs of consecutive all-zero blocks become tombstones or no rows.
// (Write-back hands zeroBlock itself for blocks it found to be zero.)
func (t *blockTable) storeLocked(n int, key func(int) int64, data func(int) []byte) error {
	bs := t.blockSize
	zero := func(i int) bool {
		d := data(i)
		return &d[0] == &zeroBlock[0] || bytes.Equal(d, zeroBlock[:bs])
	}
	for i := 0; i < n; {
		j := i + 1
		if zero(i) {
			for j < n && key(j) == key(j-1)+1 && zero(j) {
				j++
			}
			if err := t.zeroBlocksLocked(key(i), key(j-1)); err != nil {
				return err
			}
		} else {
			for j < n && !zero(j) {
				j++
			}
			from := i
			if err := t.upsertLocked("write", j-i, func(r int) int64 { return key(from + r) }, func(r int) []byte { return data(from + r) }); err != nil {
				return err
			}
			t.noteKeysWrittenLocked(j-i, func(r int) int64 { return key(from + r) })
		}
		i = j
	}
	return nil
}

// upsertLocked stores n rows with ascending keys key(i) and content
// data(i), a tombstone where data(i) is nil; upsertRunLen rows to a
// statement (BenchmarkLayer write1m-seq on tmpfs: 1.06-1.18 GB/s with
// one row per statement, 1.94-2.04 GB/s with sixteen; 64 gained nothing
// more). Inside File.Update one row goes to a statement: a statement of
// several rows has a statement journal, and a transaction larger than the
// page cache (a machine's hibernate) spills dirty pages, each of which
// the statement journal then copies first (a 512 MiB guest's first
// hibernate: 0.32 s of its 0.46 s of writing went to those copies).
func (t *blockTable) upsertLocked(op string, n int, key func(int) int64, data func(int) []byte) error {
	bind := func(s *sqlite3.Stmt, param int, d []byte) {
		if d == nil {
			s.BindNull(param)
		} else {
			s.BindBlob(param, d)
		}
	}
	i := 0
	for ; n-i >= upsertRunLen && !t.e.inUpdate; i += upsertRunLen {
		for r := range upsertRunLen {
			t.upsertRun.BindInt64(2*r+1, key(i+r))
			bind(t.upsertRun, 2*r+2, data(i+r))
		}
		if err := t.upsertRun.Exec(); err != nil {
			return t.wrap(op, key(i)*int64(t.blockSize), err)
		}
	}
	for ; i < n; i++ {
		t.upsert.BindInt64(1, key(i))
		bind(t.upsert, 2, data(i))
		if err := t.upsert.Exec(); err != nil {
			return t.wrap(op, key(i)*int64(t.blockSize), err)
		}
	}
	return nil
}

// zeroBlocksLocked makes blocks [first, last] read as zeros: tombstones if
// something below could show through, otherwise no rows.
func (t *blockTable) zeroBlocksLocked(first, last int64) error {
	var err error
	if t.e.hasParent.Load() {
		err = t.tombstoneBlocks(first, last)
	} else {
		err = t.deleteBlocks(first, last)
	}
	if err == nil {
		t.noteWrittenLocked(first, last)
	}
	return err
}

// tombstonePackBytes: zeros over at least this much data in a diff layer
// delete the data rows before making them tombstones (tombstoneBlocks).
const tombstonePackBytes = 64 << 10

// tombstoneBlocks makes blocks [first, last] tombstones. It counts the
// range's rows first: zeros over tombstones (the later passes of
// qemu-img bench -w, a guest zeroing what it zeroed before) write
// nothing, where rewriting every cell to the NULL it held dirtied every
// leaf of the range (0.53-0.63 s a pass over 1 GiB). When every block has
// a row (zeros written over written data, say) one UPDATE over the rows
// holding data does it; otherwise every key is upserted.
// (BenchmarkZeroWrites with write-back off: 1.37-1.44 GB/s with one
// recursive-CTE upsert per range, 2.38-2.83 GB/s this way.)
//
// Over tombstonePackBytes or more, rows holding data are deleted first,
// and then made again as tombstones: the UPDATE shrinks each cell in
// place, and SQLite merges leaf pages when rows are deleted, not when
// cells shrink, so every leaf kept the few cells it had (a 4 KiB sector
// keeps 489 bytes in its leaf: 8 a page) as tombstones of a few bytes,
// near-empty leaves that no reclaim can give back. 64 MiB of a diff
// layer's 66 discarded through the server: 10.4 MiB left after the
// reclaim, 2.5 MiB this way. qemu-img bench -w's 64 KiB zero writes over
// a 1 GiB diff layer of data: 17,389 leaves (68 MiB) holding its 262,144
// tombstones, which every later pass read again, against 671 leaves
// (2.7 MiB) this way. The delete costs about twice the update (1 MiB of
// data: 0.79 ms -> 1.42 ms delete + 0.32 ms insert), but that pass took
// the same time either way (1.12-1.23 s); a guest's single zero pages
// keep the update.
func (t *blockTable) tombstoneBlocks(first, last int64) error {
	n := last - first + 1
	t.countKinds.BindInt64(1, first)
	t.countKinds.BindInt64(2, last)
	var rows, tombstones int64
	if t.countKinds.Step() {
		rows, tombstones = t.countKinds.ColumnInt64(0), int64(t.countKinds.ColumnFloat(1))
	}
	if err := t.countKinds.Reset(); err != nil {
		return t.wrap("zero", first*int64(t.blockSize), err)
	}
	if tombstones == n {
		return nil
	}
	if rows > tombstones && n*int64(t.blockSize) >= tombstonePackBytes {
		t.deleteData.BindInt64(1, first)
		t.deleteData.BindInt64(2, last)
		if err := t.deleteData.Exec(); err != nil {
			return t.wrap("zero", first*int64(t.blockSize), err)
		}
		rows = tombstones
	}
	if rows > tombstones {
		t.tombstoneRange.BindInt64(1, first)
		t.tombstoneRange.BindInt64(2, last)
		if err := t.tombstoneRange.Exec(); err != nil {
			return t.wrap("zero", first*int64(t.blockSize), err)
		}
	}
	if rows == n {
		return nil
	}
	return t.upsertLocked("zero", int(n), func(i int) int64 { return first + int64(i) }, func(int) []byte { return nil })
}

func (t *blockTable) deleteBlocks(first, last int64) error {
	t.deleteRange.BindInt64(1, first)
	t.deleteRange.BindInt64(2, last)
	if err := t.deleteRange.Exec(); err != nil {
		return t.wrap("zero", first*int64(t.blockSize), err)
	}
	return nil
}

// Zero makes [off, off+length) read as zeros: whole blocks with one
// statement, partial blocks at the ends by read-modify-write.
func (t *blockTable) Zero(off, length int64) error {
	if err := disklayer.CheckRange(off, length, t.Size()); err != nil {
		return fmt.Errorf("zero %q %s: %w", t.e.path, t.table, err)
	}
	t.e.lock()
	defer t.e.mu.Unlock()
	if err := t.writable("zero"); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if err := t.e.beginLocked("zero"); err != nil {
		return err
	}
	err := t.zeroLocked(off, length)
	// Zeroing writes little data however long the range: count one block
	// per statement toward the batch.
	return t.e.afterWriteLocked("zero", int64(t.blockSize), err)
}

func (t *blockTable) zeroLocked(off, length int64) error {
	bs := int64(t.blockSize)
	end := off + length
	firstWhole := (off + bs - 1) / bs
	endWhole := end / bs // exclusive
	if firstWhole >= endWhole {
		// No whole block: one or two partial blocks.
		if off/bs == (end-1)/bs {
			return t.mergeBlockLocked(off/bs*bs, off%bs, zeroBlock[:length])
		}
		if err := t.mergeBlockLocked(off/bs*bs, off%bs, zeroBlock[:bs-off%bs]); err != nil {
			return err
		}
		return t.mergeBlockLocked(end/bs*bs, 0, zeroBlock[:end%bs])
	}
	if head := off % bs; head != 0 {
		if err := t.mergeBlockLocked(off-head, head, zeroBlock[:bs-head]); err != nil {
			return err
		}
	}
	if tail := end % bs; tail != 0 {
		if err := t.mergeBlockLocked(end-tail, 0, zeroBlock[:tail]); err != nil {
			return err
		}
	}
	return t.zeroBlocksLocked(firstWhole, endWhole-1)
}

// FillAbsent implements ReadCacher: it stores the aligned blocks of p only
// where the table has no row.
func (t *blockTable) FillAbsent(p []byte, off int64) error {
	if err := disklayer.CheckRange(off, int64(len(p)), t.Size()); err != nil {
		return fmt.Errorf("fill %q %s: %w", t.e.path, t.table, err)
	}
	bs := t.blockSize
	if off%int64(bs) != 0 || len(p)%bs != 0 {
		return fmt.Errorf("fill %q %s at %d length %d: not aligned to %d-byte blocks: %w", t.e.path, t.table, off, len(p), bs, disklayer.ErrInvalid)
	}
	t.e.lock()
	defer t.e.mu.Unlock()
	if t.lostErr != nil {
		return nil // a cache: reads must not fail for it while writes are refused
	}
	if err := t.writable("fill"); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	if err := t.e.beginLocked("fill"); err != nil {
		return err
	}
	err := t.fillLocked(p, off/int64(bs))
	err = t.e.afterWriteLocked("fill", int64(len(p)), err)
	if errors.Is(err, disklayer.ErrNoSpace) {
		// Only a cache was not filled. If the batch was lost with it,
		// the table's next Flush reports that.
		return nil
	}
	return err
}

func (t *blockTable) fillLocked(p []byte, first int64) error {
	bs := t.blockSize
	hasParent := t.e.hasParent.Load()
	for i := 0; i*bs < len(p); i++ {
		key := first + int64(i)
		data := p[i*bs : (i+1)*bs]
		if bytes.Equal(data, zeroBlock[:bs]) {
			if !hasParent {
				continue // no row already reads as zeros
			}
			t.insertAbsent.BindNull(2)
		} else {
			t.insertAbsent.BindBlob(2, data)
		}
		t.insertAbsent.BindInt64(1, key)
		if err := t.insertAbsent.Exec(); err != nil {
			return t.wrap("fill", key*int64(bs), err)
		}
	}
	return nil
}

// extentRowsPerLock bounds how many rows Extents reads per hold of the
// engine's lock, so a long map does not stall other requests and the
// consumer may call back into the layer between chunks.
const extentRowsPerLock = 4096

type kindRow struct {
	key       int64
	tombstone bool
}

// Extents implements Layer.
func (t *blockTable) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	return func(yield func(disklayer.Extent, error) bool) {
		if err := disklayer.CheckRange(off, length, t.Size()); err != nil {
			yield(disklayer.Extent{}, fmt.Errorf("map %q %s: %w", t.e.path, t.table, err))
			return
		}
		if length == 0 {
			return
		}
		bs := int64(t.blockSize)
		end := off + length
		var pending disklayer.Extent
		// emit merges e into pending and yields pending when the kind
		// changes. It returns false when the consumer stopped.
		clipped := func(e disklayer.Extent) bool {
			e.Off, e.Len = max(e.Off, off), min(e.End(), end)-max(e.Off, off)
			if e.Len <= 0 {
				return true
			}
			if pending.Len > 0 && pending.Kind == e.Kind && pending.End() == e.Off {
				pending.Len += e.Len
				return true
			}
			if pending.Len > 0 && !yield(pending, nil) {
				return false
			}
			pending = e
			return true
		}
		// Blocks whose writes were lost read as errors: map them as
		// Data, never as a hole a client would skip.
		var lost []blockSpan
		emit := func(e disklayer.Extent) bool { return lostAsData(e, lost, bs, clipped) }
		next, last := off/bs, (end-1)/bs // next: first block not yet mapped
		rows := make([]kindRow, 0, 64)
		var runs []summaryRun
		for next <= last {
			// From the summary while it is valid: a few rows per region
			// instead of one per sector.
			var summarized bool
			var err error
			runs, summarized, err = t.runsChunk(runs[:0], next, last)
			if err != nil {
				yield(disklayer.Extent{}, err)
				return
			}
			if summarized {
				for _, r := range runs {
					from, to := max(r.start, next), min(r.start+r.count, last+1)
					if to <= from {
						continue
					}
					if from > next && !emit(disklayer.Extent{Off: next * bs, Len: (from - next) * bs, Kind: disklayer.Absent}) {
						return
					}
					kind := disklayer.Data
					if r.zero {
						kind = disklayer.Zero
					}
					if !emit(disklayer.Extent{Off: from * bs, Len: (to - from) * bs, Kind: kind}) {
						return
					}
					next = to
				}
				if len(runs) < extentRowsPerLock {
					if next <= last && !emit(disklayer.Extent{Off: next * bs, Len: (last + 1 - next) * bs, Kind: disklayer.Absent}) {
						return
					}
					break
				}
				continue
			}
			rows, err = t.kindsChunk(rows[:0], next, last, &lost)
			if err != nil {
				yield(disklayer.Extent{}, err)
				return
			}
			for _, r := range rows {
				if r.key > next && !emit(disklayer.Extent{Off: next * bs, Len: (r.key - next) * bs, Kind: disklayer.Absent}) {
					return
				}
				kind := disklayer.Data
				if r.tombstone {
					kind = disklayer.Zero
				}
				if !emit(disklayer.Extent{Off: r.key * bs, Len: bs, Kind: kind}) {
					return
				}
				next = r.key + 1
			}
			if len(rows) < extentRowsPerLock {
				if next <= last && !emit(disklayer.Extent{Off: next * bs, Len: (last + 1 - next) * bs, Kind: disklayer.Absent}) {
					return
				}
				break
			}
		}
		if pending.Len > 0 {
			yield(pending, nil)
		}
	}
}

// kindsChunk appends up to extentRowsPerLock rows with keys in
// [first, last] to rows, and sets *lost to the lost blocks in that range.
func (t *blockTable) kindsChunk(rows []kindRow, first, last int64, lost *[]blockSpan) ([]kindRow, error) {
	t.e.lockFor(t, first, last)
	defer t.e.mu.Unlock()
	if err := t.usable("map"); err != nil {
		return rows, err
	}
	*lost = (*lost)[:0]
	for _, s := range t.lost {
		if s.last >= first && s.first <= last {
			*lost = append(*lost, s)
		}
	}
	if err := t.e.beginReadLocked("map"); err != nil {
		return rows, err
	}
	stmt := t.selectKinds
	stmt.BindInt64(1, first)
	stmt.BindInt64(2, last)
	stmt.BindInt64(3, extentRowsPerLock)
	for stmt.Step() {
		rows = append(rows, kindRow{key: stmt.ColumnInt64(0), tombstone: stmt.ColumnBool(1)})
	}
	if err := stmt.Reset(); err != nil {
		return rows, t.wrap("map", first*int64(t.blockSize), err)
	}
	return rows, nil
}

// Flush commits the engine's write batch (shared with the File).
func (t *blockTable) Flush() error {
	t.e.lock()
	defer t.e.mu.Unlock()
	if err := t.usable("flush"); err != nil {
		return err
	}
	return t.flushLocked("flush")
}

// Close flushes and detaches this view. It is used for the Hibernate
// view; the File's Close closes the connection.
func (t *blockTable) Close() error {
	t.e.lock()
	defer t.e.mu.Unlock()
	if err := t.usable("close"); err != nil {
		return err
	}
	t.detached = true
	if err := t.e.commitLocked("close"); err != nil {
		return err
	}
	return t.lostErr // never reported by a Flush
}

// countRows counts data rows and tombstones. Called with the lock held.
func (t *blockTable) countRows() (data, tombstones int64, err error) {
	stmt, _, err := t.e.conn.Prepare("SELECT count(data), count(*) - count(data) FROM " + t.table)
	if err != nil {
		return 0, 0, err
	}
	defer stmt.Close()
	if !stmt.Step() {
		if err := stmt.Err(); err != nil {
			return 0, 0, err
		}
	}
	return stmt.ColumnInt64(0), stmt.ColumnInt64(1), nil
}

// upsertRunLen is how many rows one upsertRun statement stores.
const upsertRunLen = 16

// valuesList returns "(?1, ?2), (?3, ?4), ..." for n rows.
func valuesList(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "(?%d, ?%d)", 2*i+1, 2*i+2)
	}
	return b.String()
}
