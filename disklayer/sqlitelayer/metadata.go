package sqlitelayer

import (
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
)

// SetParent rewrites the parent reference (rebase -u); nil makes the layer
// a base, which also drops its tombstones, since nothing is below them.
func (f *File) SetParent(ref *disklayer.ParentRef) error {
	if ref != nil {
		if err := validateParent(*ref); err != nil {
			return fmt.Errorf("set parent of %q: %w: %w", f.eng.path, err, disklayer.ErrInvalid)
		}
		r := *ref
		ref = &r
	}
	return f.eng.updateMetadata("set parent", false, func(conn *sqlite3.Conn, info *Info) error {
		if err := updateParent(conn, ref); err != nil {
			return err
		}
		if ref == nil {
			for _, table := range []string{"sectors", "hibernate_blocks"} {
				if err := conn.Exec("DELETE FROM " + table + " WHERE data IS NULL"); err != nil {
					return err
				}
			}
		}
		info.Parent = ref
		return nil
	})
}

// Resize changes the disk size. Shrinking drops the rows past the new end.
// Growing a layer with a parent writes tombstones over the part of the
// parent that was hidden beyond the old end, so it does not reappear.
func (f *File) Resize(size int64) error {
	if err := validDiskSize(size, f.disk.blockSize); err != nil {
		return fmt.Errorf("resize %q: %w", f.eng.path, err)
	}
	return f.eng.updateMetadata("resize", true, func(conn *sqlite3.Conn, info *Info) error {
		return f.resizeInTx(conn, info, size)
	})
}

// resizeInTx changes the disk size inside the caller's transaction and
// updates info; the caller publishes info once the transaction commits.
func (f *File) resizeInTx(conn *sqlite3.Conn, info *Info, size int64) error {
	t := f.disk
	old := info.DiskSize
	ss := int64(info.SectorSize)
	switch {
	case size < old:
		if err := t.deleteBlocks(size/ss, old/ss-1); err != nil {
			return err
		}
	case size > old && info.Parent != nil:
		if hidden := min(size, info.Parent.Size); hidden > old {
			if err := t.tombstoneBlocks(old/ss, (hidden+ss-1)/ss-1); err != nil {
				return err
			}
		}
	}
	stmt, _, err := conn.Prepare("UPDATE layer SET disk_size = ?1")
	if err != nil {
		return err
	}
	defer stmt.Close()
	stmt.BindInt64(1, size)
	if err := stmt.Exec(); err != nil {
		return err
	}
	info.DiskSize = size
	return nil
}

// SetReadOnly sets the read_only column. A layer marked read-only refuses
// writes and metadata changes (ErrReadOnly) until it is cleared.
func (f *File) SetReadOnly(readOnly bool) error {
	return f.eng.updateMetadataAllowReadOnly("set read-only", false, func(conn *sqlite3.Conn, info *Info) error {
		v := 0
		if readOnly {
			v = 1
		}
		if err := conn.Exec(fmt.Sprintf("UPDATE layer SET read_only = %d", v)); err != nil {
			return err
		}
		info.ReadOnly = readOnly
		return nil
	})
}

// SetReadCache sets the read_cache flag (Info.ReadCache). It does not
// move the generation: the layer's content is unchanged.
func (f *File) SetReadCache(readCache bool) error {
	return f.eng.updateMetadata("set read cache", false, func(conn *sqlite3.Conn, info *Info) error {
		if err := execBool(conn, "UPDATE layer SET read_cache = ?1", readCache); err != nil {
			return err
		}
		info.ReadCache = readCache
		return nil
	})
}

// execBool runs sql with one boolean parameter.
func execBool(conn *sqlite3.Conn, sql string, v bool) error {
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return err
	}
	defer stmt.Close()
	stmt.BindBool(1, v)
	return stmt.Exec()
}

// SetLabel sets the label column ("" stores NULL).
func (f *File) SetLabel(label string) error {
	return f.eng.updateMetadata("set label", false, func(conn *sqlite3.Conn, info *Info) error {
		stmt, _, err := conn.Prepare("UPDATE layer SET label = ?1")
		if err != nil {
			return err
		}
		defer stmt.Close()
		bindOptionalText(stmt, 1, label)
		if err := stmt.Exec(); err != nil {
			return err
		}
		info.Label = label
		return nil
	})
}

// updateMetadata changes the layer row (see changeMetadataLocked).
// content says whether the change alters what the layer shows a child
// (its size does; its label, read-only flag and parent reference do not),
// which bumps the generation.
func (e *engine) updateMetadata(op string, content bool, change func(*sqlite3.Conn, *Info) error) error {
	e.lock()
	defer e.mu.Unlock()
	if err := e.writable(op); err != nil {
		return err
	}
	return e.changeMetadataLocked(op, content, change)
}

func (e *engine) updateMetadataAllowReadOnly(op string, content bool, change func(*sqlite3.Conn, *Info) error) error {
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable(op); err != nil {
		return err
	}
	if e.openedReadOnly {
		return fmt.Errorf("%s %q: opened read-only: %w", op, e.path, disklayer.ErrReadOnly)
	}
	return e.changeMetadataLocked(op, content, change)
}

// changeMetadataLocked applies a metadata change inside the write batch
// and commits it at once: metadata changes are rare and must not wait for
// a Flush. The cached Info changes only if the commit succeeds.
func (e *engine) changeMetadataLocked(op string, content bool, change func(*sqlite3.Conn, *Info) error) error {
	batched, changed := e.inTx && e.writeTx, e.contentChanged
	if err := e.beginLocked(op); err != nil {
		return err
	}
	if !batched {
		// A transaction of its own: it changes content only if the
		// change does. (Batched writes before it did change content.)
		e.contentChanged = content
	}
	// A savepoint undoes a failed change without touching the writes
	// batched before it.
	if err := e.conn.Exec("SAVEPOINT metadata"); err != nil {
		return e.afterWriteLocked(op, 0, fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err)))
	}
	info := e.info
	if err := change(e.conn, &info); err != nil {
		err = fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err))
		if e.conn.GetAutocommit() {
			return e.afterWriteLocked(op, 0, err)
		}
		if rerr := e.conn.Exec("ROLLBACK TO metadata; RELEASE metadata"); rerr != nil {
			e.fail(fmt.Errorf("%s %q: undo failed change: %w", op, e.path, rerr))
			return e.failure
		}
		e.contentChanged = batched && changed // nothing of the change remains
		return err
	}
	if err := e.conn.Exec("RELEASE metadata"); err != nil {
		return e.afterWriteLocked(op, 0, fmt.Errorf("%s %q: %w", op, e.path, mapStoreError(err)))
	}
	if err := e.commitLocked(op); err != nil {
		return err
	}
	info.Generation = e.info.Generation // as the commit left it
	e.setInfo(info)
	return nil
}
