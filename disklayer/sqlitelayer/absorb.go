package sqlitelayer

import (
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Absorb folds child's rows (sectors and hibernate_blocks) into f, in one
// transaction: the commit of a diff layer into its parent. A child row
// replaces f's row; a child tombstone becomes a tombstone in f if f has a
// parent, or deletes f's row if f is a base. If child is larger, f grows
// to its size in the same transaction (like qemu-img commit), and then
// the child's parent reference is updated to the new size; it records
// f's new generation too, so the child still stacks on f (reading the
// same data as before). child must be a
// layer whose parent is f (same uuid) with the same sector size; it is
// flushed, and its rows are left unchanged.
func (f *File) Absorb(child *File) error {
	e := f.eng
	ci := child.Info()
	if ci.SectorSize != f.disk.blockSize {
		return fmt.Errorf("absorb %q into %q: sector sizes %d and %d differ: %w", child.Path(), e.path, ci.SectorSize, f.disk.blockSize, disklayer.ErrInvalid)
	}
	if ci.Parent == nil || ci.Parent.Format != disklayer.FormatHibdisk || ci.Parent.UUID != f.Info().UUID {
		return fmt.Errorf("absorb %q into %q: the child's parent is not this layer (uuid %s): %w", child.Path(), e.path, f.Info().UUID, disklayer.ErrParentMismatch)
	}
	// The child's batch must be committed for f's connection to see it.
	if err := child.Flush(); err != nil {
		return fmt.Errorf("absorb %q into %q: %w", child.Path(), e.path, err)
	}
	// Absorbing changes f's content, so its generation moves; the child's
	// reference must follow (and its size, if f grows), or the child
	// would no longer open over f.
	if child.eng.openedReadOnly || child.eng.readOnlyColumn.Load() {
		return fmt.Errorf("absorb %q into %q: the child's parent reference must be updated, but it is read-only: %w", child.Path(), e.path, disklayer.ErrReadOnly)
	}
	if err := f.absorb(child, ci); err != nil {
		return err
	}
	ref := *ci.Parent
	ref.Size = f.Size()
	ref.Generation = f.Info().Generation
	if err := child.SetParent(&ref); err != nil {
		return fmt.Errorf("absorb %q into %q: update the child's parent reference: %w", child.Path(), e.path, err)
	}
	return nil
}

func (f *File) absorb(child *File, ci Info) error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.writable("absorb"); err != nil {
		return err
	}
	// ATTACH is refused inside a transaction: commit the open batch first.
	if err := e.commitLocked("absorb"); err != nil {
		return err
	}
	uri, err := store.FileURI(child.Path(), "ro")
	if err != nil {
		return fmt.Errorf("absorb %q into %q: %w", child.Path(), e.path, err)
	}
	if err := execBound(e.conn, "ATTACH ?1 AS child", uri); err != nil {
		return fmt.Errorf("absorb %q into %q: attach: %w", child.Path(), e.path, mapStoreError(err))
	}
	info := e.info
	err = f.absorbAttachedLocked(&info, ci.DiskSize)
	if err == nil {
		e.setInfo(info)
	}
	if derr := e.conn.Exec("DETACH child"); derr != nil && err == nil {
		err = fmt.Errorf("detach: %w", derr)
	}
	if err != nil {
		return fmt.Errorf("absorb %q into %q: %w", child.Path(), e.path, err)
	}
	return nil
}

func (f *File) absorbAttachedLocked(info *Info, childSize int64) (err error) {
	e := f.eng
	tx, err := e.conn.BeginImmediate()
	if err != nil {
		return mapStoreError(err)
	}
	defer tx.End(&err)
	if childSize > info.DiskSize {
		if err := f.resizeInTx(e.conn, info, childSize); err != nil {
			return mapStoreError(err)
		}
	}
	for _, t := range []struct{ table, key string }{{"sectors", "sector"}, {"hibernate_blocks", "block"}} {
		var stmts []string
		if e.hasParent.Load() {
			stmts = []string{
				"INSERT INTO main." + t.table + " (" + t.key + ", data) SELECT " + t.key + ", data FROM child." + t.table + " WHERE true ON CONFLICT (" + t.key + ") DO UPDATE SET data = excluded.data",
			}
		} else {
			stmts = []string{
				"DELETE FROM main." + t.table + " WHERE " + t.key + " IN (SELECT " + t.key + " FROM child." + t.table + " WHERE data IS NULL)",
				"INSERT INTO main." + t.table + " (" + t.key + ", data) SELECT " + t.key + ", data FROM child." + t.table + " WHERE data IS NOT NULL ON CONFLICT (" + t.key + ") DO UPDATE SET data = excluded.data",
			}
		}
		for _, s := range stmts {
			if err := e.conn.Exec(s); err != nil {
				return mapStoreError(err)
			}
		}
	}
	gen, err := e.bumpGenerationInTx()
	if err != nil {
		return mapStoreError(err)
	}
	info.Generation = gen
	return nil
}

// execBound runs one statement with text parameters.
func execBound(conn *sqlite3.Conn, sql string, args ...string) error {
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return err
	}
	defer stmt.Close()
	for i, a := range args {
		stmt.BindText(i+1, a)
	}
	return stmt.Exec()
}
