package sqlitelayer

import "fmt"

// Empty deletes every row of the layer, disk and hibernate file, in one
// transaction: the layer then says nothing and its view is its parent's.
// It is what `hibdisk commit` does to a layer after folding it into a
// hibdisk parent (qemu-img commit empties the top the same way).
func (f *File) Empty() error { return f.empty("empty", f.disk, f.hib) }

// EmptyDisk deletes the rows of the disk (the sectors table) but keeps
// the hibernate file: after a commit into a raw parent, which has nowhere
// to keep hibernate blocks.
func (f *File) EmptyDisk() error { return f.empty("empty disk", f.disk) }

func (f *File) empty(op string, tables ...*blockTable) error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.writable(op); err != nil {
		return err
	}
	// Commit what is pending first, so the deletes are a transaction of
	// their own that can be rolled back whole.
	if err := e.commitLocked(op); err != nil {
		return err
	}
	if err := e.beginLocked(op); err != nil {
		return err
	}
	for _, t := range tables {
		if err := e.conn.Exec("DELETE FROM " + t.table); err != nil {
			if !e.conn.GetAutocommit() {
				e.rollback.Exec()
			}
			e.inTx = false
			return fmt.Errorf("%s %q: delete from %s: %w", op, e.path, t.table, mapStoreError(err))
		}
	}
	return e.commitLocked(op)
}
