package sqlitelayer

import "fmt"

// Compact gives the layer's free pages back to the filesystem. Deleting
// rows (commit emptying a layer, TRIM, a shrink, a dropped snapshot) only
// puts their pages on SQLite's free list, so the file keeps its size:
// a 256 MiB top emptied by commit stayed 288 MiB. VACUUM rebuilds the
// database without the free pages, and a TRUNCATE checkpoint folds the
// WAL into the file and cuts both to size. It writes the layer's live
// content once more (through the WAL, with a temporary copy), so it takes
// as long as writing that: an emptied layer takes milliseconds. The
// layer's content, uuid and generation do not change.
//
// A layer made before auto_vacuum=INCREMENTAL comes out as one that gives
// its free space back while it is open, as new layers do (reclaim.go);
// a layer that already does needs Compact only to give back space at
// once, or more than the reclaim's thresholds leave. A layer marked
// read-only is refused like any write.
func (f *File) Compact() error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.writable("compact"); err != nil {
		return err
	}
	if err := e.commitLocked("compact"); err != nil {
		return err
	}
	// A layer made before auto_vacuum=INCREMENTAL becomes one that gives
	// its space back while it is open (reclaim.go): the VACUUM applies
	// the new mode.
	vacuum := "VACUUM"
	if !e.incremental {
		vacuum = "PRAGMA auto_vacuum=INCREMENTAL; VACUUM"
	}
	if e.direct != nil {
		// VACUUM rebuilds the file: the table may get another root.
		e.direct.mu.Lock()
		defer func() {
			if root, err := sectorsRoot(e); err == nil {
				e.direct.root = root
			} else {
				e.direct.disabled.Store(true)
			}
			e.direct.clean.Store(false)
			e.direct.remapLocked()
			e.direct.mu.Unlock()
		}()
	}
	if err := vacuumOnDisk(e.conn, vacuum); err != nil {
		return fmt.Errorf("compact %q: %w", e.path, mapStoreError(err))
	}
	incremental, err := isIncremental(e.conn)
	if err != nil {
		return fmt.Errorf("compact %q: %w", e.path, mapStoreError(err))
	}
	e.incremental = incremental
	// Busy (another process reading) is not an error: the checkpointer
	// folds the WAL in later, and the file shrinks then.
	if err := e.conn.Exec("PRAGMA wal_checkpoint(TRUNCATE)"); err != nil {
		return fmt.Errorf("compact %q: checkpoint: %w", e.path, mapStoreError(err))
	}
	e.walBytes, e.requestedAt = 0, 0
	return nil
}
