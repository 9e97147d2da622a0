package sqlitelayer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/store"
)

// Space. Deleting rows (TRIM, a write of zeros over data, a shrink, commit
// emptying a layer, a dropped hibernate snapshot) puts their pages on
// SQLite's free list; later writes reuse them, but the file keeps its
// size. Layers are made with auto_vacuum=INCREMENTAL, which keeps a
// pointer map (one page per 819 pages of 4 KiB) telling SQLite what points
// at every page, so that `PRAGMA incremental_vacuum(N)` can move the last
// N pages of the file into free slots and cut the file's end off.
//
// The engine of a writable layer does that while it runs: when a commit
// leaves much free space (reclaimDue), the reclaimer waits for the frees
// to pause (reclaimQuiet), then moves pages in chunks of
// reclaimChunkBytes, taking the engine's lock for one at a time, so a
// request never waits behind more than one chunk (measured 4-14 ms per
// 8 MiB of moved pages on the development machine, 40 ms when the WAL
// file had to grow). A chunk is an ordinary synced transaction of its
// own, or, when writes are batched and not yet flushed, part of that
// batch, which commits at its Flush as before: a crash in the middle of a
// reclaim loses nothing acknowledged and leaves a consistent file
// (TestCrashDuringReclaim); a failed chunk (a full disk) is rolled back
// and only postpones the reclaim. Chunks do not change content, so they
// leave the generation alone. The database file shrinks when a checkpoint
// copies the last chunk's commit into it: a checkpoint that copies the
// whole WAL truncates the file to the size the newest commit recorded.
// After the chunks the reclaimer lets the background checkpointer copy
// the WAL, then folds the rest in itself under the engine's lock
// (foldLocked), which also cuts the WAL file to nothing. A long free
// list goes in one transaction instead (reclaimFullPages), which yields
// to requests (reclaimFullLocked, full).
//
// Close finishes a reclaim that is due, so a command that frees space and
// exits (resize --shrink, commit) leaves a small file. A layer marked
// read-only is never reclaimed (its file does not change), nor one with
// auto_vacuum=NONE: made before this, or by convert (a Scratch layer, see
// CreateOptions.Scratch). `hibdisk compact` converts those
// (File.Compact); Create makes every other new layer with it.
//
// The write path's cost of the pointer map (bench_test.go, -bench.novacuum)
// is in docs/scale-work.md.

// Reclaim thresholds; variables only so that tests can make reclaims
// frequent (SetReclaimForTest).
var (
	// reclaimMinBytes: free space below this is left for later writes to
	// reuse.
	reclaimMinBytes int64 = 8 << 20
	// reclaimFraction: free space must also be at least 1/reclaimFraction
	// of the file, so that a large layer that frees and rewrites a little
	// at a time (a guest's temporary files) does not move pages back and
	// forth ...
	reclaimFraction int64 = 16
)

const (
	// reclaimAlwaysBytes: ... unless the free space is this large
	// whatever the file's size.
	reclaimAlwaysBytes = 1 << 30
	// reclaimChunkBytes is the most free space one chunk (one
	// transaction, one hold of the engine's lock) gives back.
	reclaimChunkBytes = 4 << 20
	// reclaimChunkWork bounds a chunk's pages times the free list's
	// length (see chunkPagesFor); reclaimMinChunk is the fewest pages a
	// chunk moves.
	reclaimChunkWork = 1 << 22
	reclaimMinChunk  = 64
	// foldTries bounds the attempts to fold the WAL in after a reclaim
	// (foldLocked) while a write batch, a checkpoint or a reader is in
	// the way; foldWait is the longest wait between two.
	foldTries = 5
	foldWait  = time.Second
)

// Reclaim timing. Variables only so that tests can shorten them.
var (
	// reclaimQuiet: a reclaim starts once this long has passed without
	// another commit that left it due. A discard of a large range (a
	// guest's fstrim, mkfs, blkdiscard) arrives as a stream of requests
	// and commits; reclaiming in the middle of it moved the pages at the
	// file's end, data the next requests then freed (64 KiB zero writes
	// walking a full 256 MiB diff layer: 90 us each without a reclaim,
	// 340-390 us with one running alongside).
	reclaimQuiet = 500 * time.Millisecond
	// reclaimMaxWait bounds that wait under a stream of frees that never
	// pauses.
	reclaimMaxWait = 5 * time.Second
	// reclaimFullQuiet: a full reclaim (reclaimFullLocked) starts once
	// this long has passed without a commit, not reclaimQuiet. It is up
	// to 4.7 s of one core plus the checkpoint of what it moved, and a
	// request cancels it, wasting what it did: started after half a
	// second, it met the next burst of a guest that works in bursts
	// (qemu-img bench -w passes over a 1 GiB diff layer, about 2 s apart,
	// the first of them freeing the gigabyte: the second pass took
	// 1.2-4.2 s instead of 0.7-0.8, the reclaim and the checkpoint after
	// it taking a third of the server's CPU during it). Until then writes
	// reuse the free pages.
	reclaimFullQuiet = 5 * time.Second
	// reclaimMaxBackoff bounds the quiet spell a full reclaim that
	// requests cancelled waits for before it tries again (full).
	reclaimMaxBackoff = 30 * time.Second
)

// reclaimFullPages: a free list longer than this is given back in one
// transaction (reclaimFullLocked) instead of chunks. `PRAGMA
// incremental_vacuum` searches the free list for every page it moves (a
// free page at the file's end is looked up in it; a page in use is moved
// into one found in it), so a reclaim in chunks costs the pages given
// back times the list's length: measured (wasm SQLite, tmpfs) 118 ms a
// 1024-page chunk with 100,000 pages free, 0.33 s in all for 20,000 free
// pages, 6.3 s for 100,000 and about 23 s for 260,000 (1 GiB of 4 KiB
// pages: two passes of zeros over a full 1 GiB diff layer made the
// second pass take 23 s instead of 0.9). Committing with
// auto_vacuum=FULL moves what must move in one pass over the file's end:
// 0.18 s for 20,000 free pages, 0.41 s for 40,000, 1.5 s for 100,000 and
// 4.7 s for 270,000, in one hold of the engine's lock. So short lists go
// in chunks that never hold the lock long (chunkPagesFor), and long ones
// at once, after the same quiet period. A variable only so that tests can
// take either way.
var reclaimFullPages int64 = 16384

// createIncremental: Create makes layers with auto_vacuum=INCREMENTAL.
// A variable only so that benchmarks and tests can make the older kind.
var createIncremental = true

// makeIncremental turns the database on conn into one with
// auto_vacuum=INCREMENTAL. The mode can only change when the first page
// is written or by a VACUUM, which writes the live content once more: a
// freshly created layer takes milliseconds. (internal/store creates the
// file and its tables before the layer sees the connection.)
func makeIncremental(conn *sqlite3.Conn) error {
	return vacuumOnDisk(conn, "PRAGMA auto_vacuum=INCREMENTAL; VACUUM")
}

// vacuumOnDisk runs sql, a VACUUM, with its temporary database in a file:
// a writable layer's connection keeps temporary storage in memory (for
// statement journals, newFile), and VACUUM's copy is as big as the layer.
func vacuumOnDisk(conn *sqlite3.Conn, sql string) error {
	if err := conn.Exec("PRAGMA temp_store=FILE"); err != nil {
		return err
	}
	err := conn.Exec(sql)
	if rerr := conn.Exec("PRAGMA temp_store=MEMORY"); err == nil {
		err = rerr
	}
	return err
}

// isIncremental reports whether the database on conn has
// auto_vacuum=INCREMENTAL.
func isIncremental(conn *sqlite3.Conn) (bool, error) {
	mode, err := store.PragmaInt(conn, "auto_vacuum")
	return mode == 2, err
}

// restoreIncremental turns a layer left with auto_vacuum=FULL back to
// INCREMENTAL: a process killed inside reclaimFullLocked, between its two
// pragmas, leaves FULL, under which every commit would move pages. The
// switch is one small transaction (FULL keeps the free list empty, and a
// layer with auto_vacuum=NONE cannot be switched without a VACUUM). It
// reports whether the layer is now INCREMENTAL. Only for a writable
// connection.
func restoreIncremental(conn *sqlite3.Conn) (bool, error) {
	mode, err := store.PragmaInt(conn, "auto_vacuum")
	if err != nil || mode != 1 {
		return mode == 2, err
	}
	if err := conn.Exec("PRAGMA auto_vacuum=INCREMENTAL"); err != nil {
		return false, fmt.Errorf("auto_vacuum back to INCREMENTAL: %w", err)
	}
	return true, nil
}

// reclaimDue reports whether free bytes of free space in a file of total
// bytes are worth giving back.
func reclaimDue(free, total int64) bool {
	return free >= reclaimMinBytes && (free >= total/reclaimFraction || free >= reclaimAlwaysBytes)
}

// freePagesLocked returns the number of free pages and of all pages.
// Called with the engine's lock held.
func (e *engine) freePagesLocked() (free, total int64, err error) {
	if e.pageCounts == nil {
		if e.pageCounts, _, err = e.conn.Prepare("SELECT f.freelist_count, p.page_count FROM pragma_freelist_count() f, pragma_page_count() p"); err != nil {
			return 0, 0, err
		}
	}
	defer e.pageCounts.Reset()
	if !e.pageCounts.Step() {
		if err := e.pageCounts.Err(); err != nil {
			return 0, 0, err
		}
		return 0, 0, fmt.Errorf("page counts: no result")
	}
	return e.pageCounts.ColumnInt64(0), e.pageCounts.ColumnInt64(1), nil
}

// reclaimDueLocked reports whether the layer should give free space back
// now: it can (incremental, writable, not marked read-only) and there is
// enough (reclaimDue). Called with the engine's lock held.
func (e *engine) reclaimDueLocked() bool {
	if !e.incremental || e.openedReadOnly || e.readOnlyColumn.Load() || e.closed || e.failure != nil {
		return false
	}
	free, total, err := e.freePagesLocked()
	return err == nil && reclaimDue(free*e.pageSize, total*e.pageSize)
}

// beforeCommitLocked reports whether the write transaction about to
// commit leaves enough free space for a reclaim. Asked inside it, the
// counts cost 3.5 µs a commit (a read transaction of their own: 9 µs).
// Called with the engine's lock held.
func (e *engine) beforeCommitLocked() bool {
	return e.rc != nil && e.inTx && e.writeTx && e.reclaimDueLocked()
}

// kickReclaimLocked starts a reclaim if one is due: on open, for free
// space left by another SQLite client or a reclaim a crash cut short.
// Called with the engine's lock held.
func (e *engine) kickReclaimLocked() {
	if e.rc != nil && e.reclaimDueLocked() {
		e.rc.kick()
	}
}

// reclaimChunkLocked gives back up to pages free pages, and returns how
// many it gave back and whether free pages remain. With no write batch
// open it is a transaction of its own (an open read transaction is ended
// first). With one open it joins the batch and commits with it, counted
// against batchBytes like a write: the engine never commits writes
// before a Flush or the batch's bound on the reclaim's behalf, so a
// batch stays one transaction (TestCrashSafety checks that), and a kill
// before the Flush loses the chunk with the writes. Called with the
// engine's lock held.
func (e *engine) reclaimChunkLocked(pages int64) (n int64, more bool, err error) {
	if !e.incremental || e.openedReadOnly || e.readOnlyColumn.Load() || e.closed || e.failure != nil {
		return 0, false, nil
	}
	free, _, err := e.freePagesLocked()
	if err != nil || free == 0 {
		return 0, false, err
	}
	if e.inTx && !e.writeTx {
		if err := e.commit.Exec(); err != nil {
			return 0, false, fmt.Errorf("reclaim %q: end read transaction: %w", e.path, mapStoreError(err))
		}
		e.inTx = false
	}
	n = min(free, pages)
	err = e.conn.Exec(fmt.Sprintf("PRAGMA incremental_vacuum(%d)", n))
	if e.inTx {
		// In the batch. A failure that rolled the batch back loses its
		// writes, as a failed write's would (afterWriteLocked).
		if err != nil {
			err = fmt.Errorf("reclaim %q: %w", e.path, mapStoreError(err))
		}
		if err := e.afterWriteLocked("reclaim", n*e.pageSize, err); err != nil {
			return 0, false, err
		}
		return n, free > n, nil
	}
	if err != nil {
		// SQLite rolled the chunk back: the layer is as it was.
		return 0, false, fmt.Errorf("reclaim %q: %w", e.path, mapStoreError(err))
	}
	e.checkpointLocked(false)
	return n, free > n, nil
}

// chunkPages is the most pages a chunk gives back.
func (e *engine) chunkPages() int64 { return max(1, reclaimChunkBytes/e.pageSize) }

// chunkPagesFor is the number of pages a chunk gives back when free pages
// are on the free list: a chunk costs its pages times the list's length
// (see reclaimFullPages), so the longer the list the smaller the chunk;
// at most 5 ms here.
func (e *engine) chunkPagesFor(free int64) int64 {
	return min(e.chunkPages(), max(reclaimMinChunk, reclaimChunkWork/max(free, 1)))
}

// reclaimFullLocked gives back every free page in one transaction: the
// commit of `PRAGMA auto_vacuum=FULL`, which moves the pages in use at the
// file's end into free slots and drops the rest of the free list in one
// pass (see reclaimFullPages), then the mode goes back to INCREMENTAL.
// Like a chunk it changes no content; it is an ordinary synced
// transaction, so a crash in it leaves the layer as before or as after
// (and a crash between the two pragmas leaves FULL, which the next
// writable open undoes: restoreIncremental). It does not join an open
// write batch (the batch commits at its Flush): it then reports busy and
// does nothing. It returns the number of pages given back.
//
// The reclaimer's full reclaims yield (yielding set): a request that
// comes for the engine's lock meanwhile cancels it (yieldReclaim), SQLite
// rolls it back, and it reports busy; the reclaimer tries again after a
// longer quiet spell. So a guest never waits seconds behind one: bench-nbd's
// qemu-img bench write, whose zeros turn a gigabyte of data rows into
// tombstones and whose next pass then met the reclaim of that gigabyte,
// made 1,081-1,196 MiB/s with it in the way and 1,654 MiB/s with
// reclaims off. Close's (reclaimAllLocked) does not yield: nothing waits.
// Called with the engine's lock held.
func (e *engine) reclaimFullLocked(yielding bool) (n int64, busy bool, err error) {
	if !e.incremental || e.openedReadOnly || e.readOnlyColumn.Load() || e.closed || e.failure != nil {
		return 0, false, nil
	}
	if e.inTx && e.writeTx {
		return 0, true, nil
	}
	if e.inTx {
		if err := e.commit.Exec(); err != nil {
			return 0, false, fmt.Errorf("reclaim %q: end read transaction: %w", e.path, mapStoreError(err))
		}
		e.inTx = false
	}
	free, _, err := e.freePagesLocked()
	if err != nil || free == 0 {
		return 0, false, err
	}
	if yielding {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		e.reclaimCancel.Store(&cancel)
		if fullReclaimHook != nil {
			fullReclaimHook(ctx)
		}
		old := e.conn.SetInterrupt(ctx)
		err = e.conn.Exec("PRAGMA auto_vacuum=FULL")
		e.reclaimCancel.Store(nil)
		e.conn.SetInterrupt(old)
	} else {
		err = e.conn.Exec("PRAGMA auto_vacuum=FULL")
	}
	interrupted := errors.Is(err, sqlite3.INTERRUPT)
	// SQLite takes the new mode at once, before the transaction that
	// records it commits: go back even if that failed (it was rolled
	// back, and the layer is as it was).
	if rerr := e.conn.Exec("PRAGMA auto_vacuum=INCREMENTAL"); rerr != nil {
		// The next writable open restores the mode; meanwhile no more
		// reclaims, and commits vacuum in full.
		e.incremental = false
		if err == nil {
			err = rerr
		}
	}
	if interrupted && e.incremental {
		return 0, true, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reclaim %q: %w", e.path, mapStoreError(err))
	}
	e.checkpointLocked(false)
	return free, false, nil
}

// fullReclaimHook, if set (tests), runs as a yielding full reclaim
// begins, with the context a request cancels.
var fullReclaimHook func(ctx context.Context)

// yieldReclaim cancels the reclaimer's full reclaim if one is running:
// for a request about to wait for the engine's lock.
func (e *engine) yieldReclaim() {
	if c := e.reclaimCancel.Load(); c != nil {
		(*c)()
	}
}

// reclaimAllLocked gives back every free page, waiting for the
// checkpointer whenever the WAL passes its limit: for Close, which waits
// for it anyway. Called with the engine's lock held.
func (e *engine) reclaimAllLocked() error {
	if free, _, err := e.freePagesLocked(); err != nil || free > reclaimFullPages {
		if err != nil {
			return err
		}
		if _, busy, err := e.reclaimFullLocked(false); err != nil || !busy {
			return err
		}
	}
	for {
		free, _, err := e.freePagesLocked()
		if err != nil {
			return err
		}
		_, more, err := e.reclaimChunkLocked(e.chunkPagesFor(free))
		if err != nil || !more {
			return err
		}
		if e.ckpt != nil && e.walBytes >= walLimitBytes {
			e.ckpt.catchUp()
			e.requestedAt = e.walBytes
		}
	}
}

// foldLocked folds the WAL into the database file after a reclaim, so
// that the file shrinks now, and cuts the WAL file to nothing: a TRUNCATE
// checkpoint on the engine's connection, which no commit can race (a
// PASSIVE checkpoint on the checkpointer's connection that sees a commit
// arrive while it copies does not truncate the file, and under steady
// writes the next one may not either). After Prefault, which grew the WAL
// file for a hibernate to come (growing it again would cost that
// hibernate 150-220 ms), it is a PASSIVE checkpoint, which leaves the
// file. The checkpointer has copied most of the WAL just before, so what
// is left is what was committed since. It does not wait for anyone: with
// the busy timeout off, a checkpointer still running or another process
// reading makes it return busy, having done what it could. An open write
// batch makes it return busy at once: a connection cannot checkpoint
// inside a transaction, and the batch is not committed before its Flush
// (see reclaimChunkLocked). Called with the engine's lock held.
func (e *engine) foldLocked() (busy bool, err error) {
	if e.closed || e.failure != nil {
		return false, nil
	}
	if e.inTx && e.writeTx {
		return true, nil
	}
	if e.inTx {
		if err := e.commit.Exec(); err != nil {
			return false, fmt.Errorf("reclaim %q: end read transaction: %w", e.path, mapStoreError(err))
		}
		e.inTx = false
	}
	timeout, err := store.PragmaInt(e.conn, "busy_timeout")
	if err != nil {
		return false, fmt.Errorf("reclaim %q: %w", e.path, err)
	}
	if err := e.conn.Exec("PRAGMA busy_timeout=0"); err != nil {
		return false, fmt.Errorf("reclaim %q: %w", e.path, err)
	}
	mode := "TRUNCATE"
	if e.keepWAL {
		mode = "PASSIVE"
	}
	var before uint64
	if e.direct != nil {
		before = e.direct.beginCheckpoint()
	}
	res, err := store.PragmaInt(e.conn, "wal_checkpoint("+mode+")")
	if e.direct != nil {
		// TRUNCATE returns 0 only when it copied and emptied the WAL.
		e.direct.endCheckpoint(before, err == nil && res == 0 && mode == "TRUNCATE")
	}
	if rerr := e.conn.Exec(fmt.Sprintf("PRAGMA busy_timeout=%d", timeout)); err == nil {
		err = rerr
	}
	if err != nil {
		return false, fmt.Errorf("reclaim %q: checkpoint: %w", e.path, mapStoreError(err))
	}
	if res != 0 {
		return true, nil
	}
	if !e.keepWAL {
		e.walBytes, e.requestedAt = 0, 0
	}
	return false, nil
}

// reclaimer gives free pages back on a goroutine of its own, one chunk
// per hold of the engine's lock (see the comment at the top).
type reclaimer struct {
	e    *engine
	wake chan struct{} // buffered 1: a reclaim is due
	// committed (buffered 1) is signalled by every commit: fold waits
	// for the open batch to commit.
	committed chan struct{}
	quit      chan struct{} // closed by stop
	done      chan struct{} // closed when run returns
	once      sync.Once
	// watch, if set (tests), receives each round's outcome.
	watch atomic.Pointer[chan reclaimRound]
}

// reclaimRound is what one round of the reclaimer did, for tests
// (export_test.go).
type reclaimRound struct {
	Pages int64 // free pages given back
	Err   error
}

func startReclaimer(e *engine) *reclaimer {
	r := &reclaimer{e: e, wake: make(chan struct{}, 1), committed: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go r.run()
	return r
}

// kick asks for a reclaim; it never blocks, and does nothing once the
// reclaimer stopped.
func (r *reclaimer) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// noteCommit tells a fold waiting for a commit that one happened; it
// never blocks.
func (r *reclaimer) noteCommit() {
	select {
	case r.committed <- struct{}{}:
	default:
	}
}

// stop ends the reclaimer and waits for it: a chunk in progress finishes.
// It must be called without the engine's lock, before the checkpointer
// stops (the reclaimer waits for checkpoints without the lock).
func (r *reclaimer) stop() {
	r.once.Do(func() { close(r.quit) })
	<-r.done
}

func (r *reclaimer) stopping() bool {
	select {
	case <-r.quit:
		return true
	default:
		return false
	}
}

func (r *reclaimer) run() {
	defer close(r.done)
	for {
		select {
		case <-r.quit:
			return
		case <-r.wake:
		}
		if !r.settle() {
			return
		}
		pages, err := r.round()
		if w := r.watch.Load(); w != nil {
			select {
			case *w <- reclaimRound{pages, err}:
			default:
			}
		}
	}
}

// full gives back every free page in one transaction
// (reclaimFullLocked), yielding to requests, once reclaimFullQuiet has
// passed without a commit. With a write batch open, which it does not
// join, it waits for the batch to commit and tries again; when a request
// cancelled it, it waits for a quiet spell twice as long as the last
// (reclaimFullQuiet, then doubling up to reclaimMaxBackoff) and tries
// again. Under requests that never pause for that long the free pages
// stay on the free list, where writes reuse them, until a pause or
// Close.
func (r *reclaimer) full() (int64, error) {
	e := r.e
	backoff := reclaimFullQuiet
	if !r.quietFor(backoff) {
		return 0, nil
	}
	for {
		e.mu.Lock()
		batch := e.inTx && e.writeTx
		n, busy, err := e.reclaimFullLocked(true)
		e.mu.Unlock()
		if err != nil || !busy {
			return n, err
		}
		if batch {
			select {
			case <-r.quit:
				return 0, nil
			case <-r.committed:
			}
			continue
		}
		if !r.quietFor(backoff) {
			return 0, nil
		}
		backoff = min(2*backoff, reclaimMaxBackoff)
	}
}

// quietFor waits until d passes without a commit; it reports false if
// the reclaimer is stopping.
func (r *reclaimer) quietFor(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-r.quit:
			return false
		case <-r.committed:
			t.Reset(d)
		case <-t.C:
			return true
		}
	}
}

// fold folds the WAL in after a round (foldLocked), waiting for the open
// write batch to commit, or a checkpoint or a reader to go, between
// attempts. If none succeeds, the file shrinks at a later checkpoint that
// sees no commit arrive while it copies.
func (r *reclaimer) fold() error {
	e := r.e
	for range foldTries {
		e.ckpt.catchUp()
		if r.stopping() {
			return nil
		}
		e.mu.Lock()
		busy, err := e.foldLocked()
		e.mu.Unlock()
		if err != nil || !busy {
			return err
		}
		select {
		case <-r.quit:
			return nil
		case <-r.committed:
		case <-time.After(foldWait):
		}
	}
	return nil
}

// settle waits until reclaimQuiet passes without another wake, or
// reclaimMaxWait since the first (see reclaimQuiet). It reports false if
// the reclaimer is stopping.
func (r *reclaimer) settle() bool {
	quiet := time.NewTimer(reclaimQuiet)
	defer quiet.Stop()
	limit := time.NewTimer(reclaimMaxWait)
	defer limit.Stop()
	for {
		select {
		case <-r.quit:
			return false
		case <-r.wake:
			quiet.Reset(reclaimQuiet)
		case <-quiet.C:
			return true
		case <-limit.C:
			return true
		}
	}
}

// round gives back the free pages there are when it starts (pages freed
// meanwhile wait for the next round, so that a round ends under a stream
// of frees), then waits for the checkpoint that truncates the file and
// cuts the WAL. It returns the number of pages it gave back.
func (r *reclaimer) round() (int64, error) {
	e := r.e
	e.mu.Lock()
	due := e.reclaimDueLocked()
	free, _, err := e.freePagesLocked()
	e.mu.Unlock()
	if !due || err != nil {
		return 0, err
	}
	var pages int64
	if free > reclaimFullPages {
		pages, err = r.full()
	} else {
		pages, err = r.chunks(free)
	}
	if err == nil {
		err = r.fold()
	}
	e.mu.Lock()
	if err == nil && e.reclaimDueLocked() {
		// Freed again meanwhile: go on.
		r.kick()
	}
	e.mu.Unlock()
	return pages, err
}

// chunks gives back free pages (those free when the round started) in
// chunks, one hold of the engine's lock each.
func (r *reclaimer) chunks(free int64) (int64, error) {
	e := r.e
	var pages int64
	for pages < free {
		if r.stopping() {
			return pages, nil
		}
		e.mu.Lock()
		left, _, err := e.freePagesLocked()
		var n int64
		more := false
		if err == nil {
			n, more, err = e.reclaimChunkLocked(min(e.chunkPagesFor(left), free-pages))
		}
		wait := e.walBytes >= walLimitBytes
		e.mu.Unlock()
		pages += n
		if err != nil {
			return pages, err
		}
		if !more {
			break
		}
		if wait {
			// Let the checkpointer catch up, without the lock, so the
			// WAL stays bounded while requests go on.
			e.ckpt.catchUp()
		}
	}
	return pages, nil
}
