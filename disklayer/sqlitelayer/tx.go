package sqlitelayer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Tx is a transaction on a layer's own database, for packages that keep
// their own tables in the layer (hibfile's hibernate metadata) and must
// change them atomically with the hibernate file. It is valid only inside
// the function passed to File.Update.
type Tx struct {
	f    *File
	done bool
	// markReadOnly: MarkReadOnly was called; the cached Info follows
	// once the transaction commits.
	markReadOnly bool
}

// Update runs fn in the layer's write transaction: fn's statements on
// tx.Conn() and its hibernate writes (tx.WriteHibernate) commit together
// in one synced commit when fn returns nil, or are undone when it
// returns an error. Writes batched before Update commit with it. Large
// writes inside fn do not commit early: the transaction holds them all.
// Every other request on the layer waits until Update returns; fn must
// not call f's methods (they would wait for the lock fn runs under).
func (f *File) Update(op string, fn func(tx *Tx) error) error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.writable(op); err != nil {
		return err
	}
	batched, changed := e.inTx && e.writeTx, e.contentChanged
	if err := e.beginLocked(op); err != nil {
		return err
	}
	// A savepoint undoes a failed fn without touching earlier batched
	// writes.
	if err := e.conn.Exec("SAVEPOINT layer_update"); err != nil {
		return e.afterWriteLocked(op, 0, fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err)))
	}
	tx := &Tx{f: f}
	e.inUpdate = true
	err := fn(tx)
	e.inUpdate = false
	tx.done = true
	if err != nil {
		if e.conn.GetAutocommit() {
			// SQLite rolled the whole transaction back on its own.
			return e.afterWriteLocked(op, 0, err)
		}
		if rerr := e.conn.Exec("ROLLBACK TO layer_update; RELEASE layer_update"); rerr != nil {
			e.fail(fmt.Errorf("%s %q: undo failed update: %w", op, e.path, rerr))
			return e.failure
		}
		e.contentChanged = batched && changed // nothing of fn's remains
		return err
	}
	if err := e.conn.Exec("RELEASE layer_update"); err != nil {
		return e.afterWriteLocked(op, 0, fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err)))
	}
	// A large update (a machine's RAM) leaves a large WAL: its caller
	// waits for the commit, which is durable once the WAL is synced, so
	// copying the WAL into the database is left to the background
	// checkpointer (measured: the wait was 1.0 s of a 2.8 s hibernate of
	// a 512 MiB guest storing 109 MiB). The next ordinary commit waits
	// for it if the WAL is still past walLimitBytes.
	e.noCatchUp = true
	err = e.commitLocked(op)
	e.noCatchUp = false
	if err != nil {
		return err
	}
	if tx.markReadOnly {
		info := e.info
		info.ReadOnly = true
		e.setInfo(info)
	}
	return nil
}

// MarkReadOnly marks the layer read-only (File.SetReadOnly) in this
// transaction: a machine snapshot and the mark that keeps it from being
// written commit together.
func (tx *Tx) MarkReadOnly() error {
	if tx.done {
		return fmt.Errorf("mark %q read-only: transaction ended: %w", tx.f.eng.path, disklayer.ErrClosed)
	}
	if err := tx.f.eng.conn.Exec("UPDATE layer SET read_only = 1"); err != nil {
		return fmt.Errorf("mark %q read-only: %w", tx.f.eng.path, mapStoreError(err))
	}
	tx.markReadOnly = true
	return nil
}

// View runs fn with the layer's connection inside its read transaction,
// which sees every write that completed before, flushed or not. fn must
// only read, and must not call f's methods (they would wait for the lock
// fn runs under).
func (f *File) View(op string, fn func(conn *sqlite3.Conn) error) error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable(op); err != nil {
		return err
	}
	if err := e.beginReadLocked(op); err != nil {
		return err
	}
	if err := fn(e.conn); err != nil {
		return fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err))
	}
	return nil
}

// Conn is the layer's connection, inside the transaction.
func (tx *Tx) Conn() *sqlite3.Conn { return tx.f.eng.conn }

// Path is the layer's file name.
func (tx *Tx) Path() string { return tx.f.eng.path }

// HasParent reports whether the layer has a parent (all-zero hibernate
// blocks then become tombstones instead of no rows).
func (tx *Tx) HasParent() bool { return tx.f.eng.hasParent.Load() }

// WriteHibernate writes p at off into the layer's hibernate file, with the
// row rules of WriteAt (all-zero blocks become tombstones or no rows).
func (tx *Tx) WriteHibernate(p []byte, off int64) error {
	t := tx.f.hib
	if tx.done {
		return fmt.Errorf("write %q %s: transaction ended: %w", t.e.path, t.table, disklayer.ErrClosed)
	}
	if err := disklayer.CheckRange(off, int64(len(p)), t.Size()); err != nil {
		return fmt.Errorf("write %q %s: %w", t.e.path, t.table, err)
	}
	if len(p) == 0 {
		return nil
	}
	if err := t.writeLocked(p, off); err != nil {
		return err
	}
	t.e.pendingBytes += int64(len(p))
	return nil
}

// ForgetHibernate drops the layer's own rows for the whole blocks of
// [off, off+length) of the hibernate file, so the parent's content (or
// zeros) shows through there. off and length must be block aligned.
func (tx *Tx) ForgetHibernate(off, length int64) error {
	t := tx.f.hib
	if tx.done {
		return fmt.Errorf("forget %q %s: transaction ended: %w", t.e.path, t.table, disklayer.ErrClosed)
	}
	bs := int64(t.blockSize)
	if err := disklayer.CheckRange(off, length, t.Size()); err != nil {
		return fmt.Errorf("forget %q %s: %w", t.e.path, t.table, err)
	}
	if off%bs != 0 || length%bs != 0 {
		return fmt.Errorf("forget %q %s at %d length %d: not %d-byte aligned: %w", t.e.path, t.table, off, length, bs, disklayer.ErrInvalid)
	}
	if length == 0 {
		return nil
	}
	return t.deleteBlocks(off/bs, (off+length)/bs-1)
}

// Prefault readies the layer for a transaction that writes more than its
// page cache holds (a machine's hibernate) while nobody waits, so that
// the transaction does not pay for memory touched the first time, which
// on these machines (virtual) is the largest cost of writing:
//   - SQLite's memory: a page fault (~11 µs) for each page of the memory
//     such a transaction uses (store.Prefault);
//   - the WAL file: appending 110 MiB to it took 150-220 ms of kernel
//     time allocating page cache, writing over pages it already has
//     10 ms. The file is extended with zeros up to walKeepBytes, the
//     size journal_size_limit lets it keep anyway. SQLite reads a WAL
//     only up to its last valid frame (frames carry the header's salts
//     and a running checksum), so bytes past it are never read as
//     frames, whatever they hold; SQLite itself leaves old frames there.
//
// It holds the layer's lock while it runs (0.3-0.5 s here).
func (f *File) Prefault() error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable("prefault"); err != nil {
		return err
	}
	if err := store.Prefault(e.conn, prefaultBytes); err != nil {
		return fmt.Errorf("prefault %q: %w", e.path, mapStoreError(err))
	}
	if e.openedReadOnly {
		return nil
	}
	if err := growWAL(e.path+"-wal", walKeepBytes); err != nil {
		return fmt.Errorf("prefault %q: %w", e.path, err)
	}
	e.keepWAL = true // a reclaim must not cut it (foldLocked)
	return nil
}

// growWAL extends the WAL file at path with zeros to size bytes (a
// missing WAL is left alone: SQLite creates it).
func growWAL(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() >= size {
		return nil
	}
	zeros := make([]byte, 1<<20)
	for off := st.Size(); off < size; off += int64(len(zeros)) {
		if _, err := f.WriteAt(zeros[:min(int64(len(zeros)), size-off)], off); err != nil {
			return err
		}
	}
	// Written out now, or the next commit's fsync would write them (a
	// hibernate right after boot took 70 ms longer to stop, QEMU's flush
	// waiting for 128 MiB of zeros).
	return f.Sync()
}
