package sqlitelayer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/lock"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Tuning. pageSizeFor (layer.go) documents the page size measurement.
const (
	// cacheBytes is SQLite's page cache per connection. It counts against
	// the connection's memory cap (maxMemory).
	cacheBytes = 64 << 20
	// readOnlyCacheBytes is the page cache of a read-only connection:
	// the parents of every chain, one per export that uses them. They
	// are read through the file mapping and the kernel's page cache
	// anyway, and a page cache's memory costs a first-touch fault per
	// page as it fills (18 µs here): filling 64 MiB was 0.28 s of the
	// 0.9 s `hibdisk map` of a 1 GiB base took, and eight servers over
	// one base each paid it before serving. 16 MiB holds the interior
	// pages of a base of 100 GiB of data (2 MiB per 8 GiB).
	readOnlyCacheBytes = 16 << 20
	maxMemory          = 256 << 20
	// batchBytes bounds the data written in one transaction before it is
	// committed early; the WAL then stays bounded during long sequential
	// writes. Early commits run with synchronous=FULL like every commit,
	// so they are as durable as a Flush.
	batchBytes = 16 << 20
	// prefaultBytes is what File.Prefault touches: a full page cache of
	// 4 KiB pages (each with its header) and SQLite's memory around it
	// (BenchmarkSaveRAM: a save of 128 MiB took 31,000 page faults on a
	// cold connection, 15,000 after a prefault of 64 MiB, 691 after 96
	// MiB, 67 after 128 MiB).
	prefaultBytes = 96 << 20
)

// engine is the state a File and its Hibernate view share: one
// connection, its open write batch, and the sticky error.
type engine struct {
	mu   sync.Mutex
	conn *sqlite3.Conn
	path string

	openedReadOnly bool
	// scratch: CreateOptions.Scratch (no journal, no syncs until Close).
	scratch        bool
	info           Info // the layer row; changed only under mu
	hasParent      atomic.Bool
	readOnlyColumn atomic.Bool

	// inTx: a transaction is open. Reads open one too and leave it open
	// (a deferred BEGIN): each statement in autocommit mode would take and
	// release WAL read locks, two fcntl calls per read. The first write
	// upgrades the transaction; Flush commits it.
	inTx bool
	// writeTx: the open transaction holds the write lock (it began as
	// or was turned into the write batch). Only meaningful while inTx.
	writeTx      bool
	pendingBytes int64 // bytes written in the open batch
	// failure is sticky: set when a commit fails or SQLite rolled back a
	// batch on its own, so writes the caller saw succeed were lost. Every
	// later request returns it. A loss for lack of space is not sticky:
	// see loseBatchLocked.
	failure error
	closed  bool

	begin, beginRead, commit, rollback *sqlite3.Stmt
	tables                             []*blockTable

	// ckpt checkpoints in the background (writable opens only). walBytes
	// is the WAL's size after the last commit (from the WAL hook);
	// requestedAt its size at the last checkpoint request.
	ckpt        *checkpointer
	walBytes    int64
	requestedAt int64

	// commits counts the commits of the engine's connection (the WAL
	// hook): reclaim.go tells by it whether anything was committed
	// since a checkpoint.
	commits uint64

	// incremental: the layer has auto_vacuum=INCREMENTAL and gives free
	// pages back while it is open, through rc (reclaim.go; writable
	// opens only). pageSize is the database's page size.
	incremental bool
	pageSize    int64
	rc          *reclaimer
	// reclaimCancel cancels the reclaimer's full reclaim while one runs
	// (reclaimFullLocked); requests call it before they wait for mu
	// (yieldReclaim).
	reclaimCancel atomic.Pointer[context.CancelFunc]
	pageCounts    *sqlite3.Stmt // free pages, all pages (freePagesLocked)
	// keepWAL: Prefault grew the WAL file for a hibernate to come; a
	// reclaim folds the WAL in without cutting the file.
	keepWAL bool

	// wb is the sectors table's write-back (OpenOptions.WriteBack), or nil.
	wb *writeBack
	// held is the layer's lock against other processes (internal/lock),
	// released when the layer closes.
	held *lock.Lock
	// sidecars: the -wal and -shm files a read-only open leaves, removed
	// when it closes if nobody else has the layer open.
	sidecars store.Sidecars
	// release, for a layer opened over a reader (OpenReaderAt), lets
	// the reader go after the connection closed; readerSize is the
	// reader's size (the layer has no file of its own).
	release    func()
	readerSize int64

	// contentChanged: the open write transaction changed content, so its
	// commit bumps the generation (bumpGen, writable opens only).
	contentChanged bool
	bumpGen        *sqlite3.Stmt

	// inUpdate: File.Update's fn runs (blockTable.upsertLocked).
	inUpdate bool
	// noCatchUp: the commit in progress is one large transaction
	// (File.Update) whose caller waits for it; the checkpoint of its
	// WAL runs in the background instead of in the commit.
	noCatchUp bool

	// direct reads the sectors table from the file's B-tree when the
	// file holds every committed page (direct.go); nil when the layer
	// does not read that way. dirty: writes that returned may be
	// uncommitted (an open write batch, or write-back holding data);
	// set before a write returns, cleared by a commit that leaves
	// nothing pending (cleanLocked). failed mirrors failure != nil.
	direct        *direct
	dirty, failed atomic.Bool
}

// startBackgroundCheckpoints moves WAL checkpoints off the request path:
// the engine's connection stops checkpointing by itself, and a
// checkpointer does it when enough has been committed.
func startBackgroundCheckpoints(e *engine) error {
	if err := e.conn.Exec(fmt.Sprintf("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=%d", walKeepBytes)); err != nil {
		return fmt.Errorf("disable automatic checkpoints: %w", err)
	}
	pageSize, err := store.PragmaInt(e.conn, "page_size")
	if err != nil {
		return err
	}
	// Set after wal_autocheckpoint, which replaces the WAL hook. It runs
	// inside COMMIT, under e.mu.
	e.conn.WALHook(func(_ *sqlite3.Conn, _ string, pages int) error {
		e.walBytes = int64(pages) * pageSize
		e.commits++
		if e.direct != nil {
			e.direct.committed()
		}
		return nil
	})
	c, err := startCheckpointer(e.path)
	if err != nil {
		return err
	}
	e.ckpt = c
	return nil
}

// startReclaim readies a writable engine to give free pages back while
// it runs (reclaim.go). After startBackgroundCheckpoints.
func startReclaim(e *engine) error {
	var err error
	if e.pageSize, err = store.PragmaInt(e.conn, "page_size"); err != nil {
		return err
	}
	if e.incremental, err = restoreIncremental(e.conn); err != nil {
		return err
	}
	e.rc = startReclaimer(e)
	return nil
}

// setInfo publishes a committed layer row. Called with mu held (or
// before the engine is shared).
func (e *engine) setInfo(info Info) {
	e.info = info
	for _, t := range e.tables {
		if t.table == "sectors" {
			t.size.Store(info.DiskSize)
		}
	}
	e.hasParent.Store(info.Parent != nil)
	e.readOnlyColumn.Store(info.ReadOnly)
}

func (e *engine) closeStatements() {
	for _, t := range e.tables {
		t.closeStatements()
	}
	for _, s := range []*sqlite3.Stmt{e.begin, e.beginRead, e.commit, e.rollback, e.bumpGen, e.pageCounts} {
		if s != nil {
			s.Close()
		}
	}
}

func (e *engine) closeLocked() error {
	if e.closed {
		return fmt.Errorf("close layer %q: %w", e.path, disklayer.ErrClosed)
	}
	if e.direct != nil {
		e.direct.close()
	}
	if e.wb != nil {
		e.wb.stopLocked()
	}
	var err error
	if e.failure != nil {
		err = e.failure
	} else {
		err = e.commitLocked("close")
	}
	for _, t := range e.tables {
		if err == nil && t.lostErr != nil {
			err = t.lostErr // never reported by a Flush
		}
	}
	if err == nil && e.reclaimDueLocked() {
		// What the reclaimer (stopped by File.Close) would have done: a
		// command that freed space and exits leaves a small file. A
		// failed reclaim was rolled back and loses nothing; the space
		// stays free until the layer is next open.
		_ = e.reclaimAllLocked()
	}
	if e.inTx {
		e.rollback.Exec()
		e.inTx = false
	}
	e.closeStatements()
	if e.scratch && err == nil {
		err = e.finishScratchLocked()
	}
	if e.ckpt != nil {
		if cerr := e.ckpt.stop(); cerr != nil && err == nil {
			err = fmt.Errorf("close layer %q: checkpoint: %w", e.path, cerr)
		}
	}
	if cerr := e.conn.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close layer %q: %w", e.path, cerr)
	}
	e.sidecars.Tidy()
	if e.release != nil {
		e.release()
	}
	// The lock outlives the connection: nobody else may write before
	// the last commit and checkpoint are done.
	if cerr := e.held.Release(); cerr != nil && err == nil {
		err = fmt.Errorf("close layer %q: release lock: %w", e.path, cerr)
	}
	e.closed = true
	return err
}

// usable returns the error a request must fail with before touching the
// database: closed, or a sticky failure. Called with mu held.
func (e *engine) usable(op string) error {
	if e.closed {
		return fmt.Errorf("%s %q: %w", op, e.path, disklayer.ErrClosed)
	}
	return e.failure
}

// writable additionally refuses writes to a read-only layer.
func (e *engine) writable(op string) error {
	if err := e.usable(op); err != nil {
		return err
	}
	if e.openedReadOnly {
		return fmt.Errorf("%s %q: opened read-only: %w", op, e.path, disklayer.ErrReadOnly)
	}
	if e.readOnlyColumn.Load() {
		return fmt.Errorf("%s %q: layer is marked read-only: %w", op, e.path, disklayer.ErrReadOnly)
	}
	return nil
}

// beginReadLocked opens a (deferred) transaction for reading if none is
// open.
func (e *engine) beginReadLocked(op string) error {
	e.readTxEndedLocked()
	if e.inTx {
		return nil
	}
	if err := e.beginRead.Exec(); err != nil {
		return fmt.Errorf("%s %q: begin: %w", op, e.path, mapStoreError(err))
	}
	e.inTx = true
	e.writeTx = false
	e.pendingBytes = 0
	return nil
}

// readTxEndedLocked notes a read transaction that SQLite ended by
// itself: an I/O error of the file's reader (a lazy remote layer whose
// store failed, readervfs) rolls it back. It held no writes; the next
// read begins another.
func (e *engine) readTxEndedLocked() {
	if e.inTx && !e.writeTx && e.conn.GetAutocommit() {
		e.inTx = false
	}
}

// beginLocked opens the write batch unless it is open. An open read
// transaction is ended first rather than upgraded: its snapshot may be
// older than a commit another connection made since (a `hibdisk ds` or
// `hib capture` process, say), and SQLite refuses to upgrade a stale
// snapshot (SQLITE_BUSY_SNAPSHOT, which no busy timeout cures). It holds
// no writes, so ending it loses nothing; BEGIN IMMEDIATE then waits for
// the write lock under the busy timeout.
func (e *engine) beginLocked(op string) error {
	if e.inTx && e.writeTx {
		return nil
	}
	if e.inTx {
		if err := e.commit.Exec(); err != nil {
			return fmt.Errorf("%s %q: end read transaction: %w", op, e.path, mapStoreError(err))
		}
		e.inTx = false
	}
	e.dirty.Store(true) // before any write of the batch returns
	if err := e.begin.Exec(); err != nil {
		return fmt.Errorf("%s %q: begin: %w", op, e.path, mapStoreError(err))
	}
	e.inTx = true
	e.writeTx = true
	e.pendingBytes = 0
	e.contentChanged = true
	return nil
}

// commitLocked commits the open batch, if any. A failed commit loses
// writes that were acknowledged: it becomes the sticky failure.
func (e *engine) commitLocked(op string) error {
	e.readTxEndedLocked()
	if !e.inTx {
		return nil
	}
	gen, err := e.bumpGenerationLocked()
	reclaim := err == nil && e.beforeCommitLocked()
	if err == nil {
		err = e.commit.Exec()
	}
	if err == nil {
		e.inTx = false
		e.pendingBytes = 0
		e.contentChanged = false
		if gen != 0 {
			e.info.Generation = gen
		}
		for _, t := range e.tables {
			t.batch = t.batch[:0]
		}
		e.cleanLocked()
		e.checkpointLocked(!e.noCatchUp)
		if e.rc != nil {
			e.rc.noteCommit()
			if reclaim {
				e.rc.kick()
			}
		}
		return nil
	}
	if err := mapStoreError(err); errors.Is(err, disklayer.ErrNoSpace) {
		return e.loseBatchLocked(fmt.Errorf("%s %q: commit failed, writes since the last flush are lost: %w", op, e.path, err))
	}
	if !e.conn.GetAutocommit() {
		e.rollback.Exec()
	}
	e.inTx = false
	e.fail(fmt.Errorf("%s %q: commit failed, writes since the last flush are lost: %w", op, e.path, mapStoreError(err)))
	return e.failure
}

// checkpointLocked keeps the WAL bounded after a commit: a background
// checkpoint every checkpointBytes of WAL, and (with wait) a wait for one
// to catch up once the WAL reaches walLimitBytes (see checkpointer).
// Without wait a WAL past the limit only gets a background checkpoint;
// the next commit that may wait catches up if it has not finished.
func (e *engine) checkpointLocked(wait bool) {
	if e.ckpt == nil {
		return
	}
	if e.walBytes < e.requestedAt {
		e.requestedAt = 0 // the WAL started over
	}
	switch {
	case e.walBytes >= walLimitBytes && wait:
		e.ckpt.catchUp()
		e.requestedAt = e.walBytes
	case e.walBytes-e.requestedAt >= checkpointBytes || e.walBytes >= walLimitBytes:
		e.ckpt.request()
		e.requestedAt = e.walBytes
	}
}

// afterWriteLocked accounts n written bytes and commits early when the
// batch is large. err is the write statement's error: if SQLite rolled the
// whole batch back on its own (it does for I/O errors and out of memory),
// acknowledged writes are gone and that becomes the sticky failure.
func (e *engine) afterWriteLocked(op string, n int64, err error) error {
	if err != nil {
		if e.inTx && e.conn.GetAutocommit() && errors.Is(mapStoreError(err), disklayer.ErrNoSpace) {
			return e.loseBatchLocked(fmt.Errorf("%s %q: the write batch was rolled back, writes since the last flush are lost: %w", op, e.path, err))
		}
		if e.inTx && e.conn.GetAutocommit() {
			e.inTx = false
			e.fail(fmt.Errorf("%s %q: the write batch was rolled back, writes since the last flush are lost: %w", op, e.path, mapStoreError(err)))
			return e.failure
		}
		return err
	}
	e.pendingBytes += n
	if e.pendingBytes >= batchBytes {
		return e.commitLocked(op)
	}
	return nil
}

// finishScratchLocked turns a Scratch layer into an ordinary one before
// it closes: back to WAL and synchronous=FULL, and the file synced (with
// the journal off, nothing synced it).
func (e *engine) finishScratchLocked() error {
	if err := e.conn.Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL"); err != nil {
		return fmt.Errorf("close layer %q: %w", e.path, mapStoreError(err))
	}
	f, err := os.OpenFile(e.path, os.O_RDWR, 0)
	if err == nil {
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("close layer %q: sync: %w", e.path, err)
	}
	return nil
}
