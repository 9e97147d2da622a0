package sqlitelayer

import (
	"fmt"
	"os"

	"github.com/hibdisk/hibdisk/internal/store"
)

// Stats summarise a layer's contents, for `hibdisk info`.
type Stats struct {
	DataSectors      int64 // rows in sectors holding data
	TombstoneSectors int64 // rows in sectors with data IS NULL
	DataBlocks       int64 // rows in hibernate_blocks holding data
	TombstoneBlocks  int64 // rows in hibernate_blocks with data IS NULL
	PageSize         int
	FileBytes        int64 // the database file plus its WAL
	FreeBytes        int64 // pages on SQLite's free list, in bytes
	// Reclaims: the layer gives free space back while it is open
	// (auto_vacuum=INCREMENTAL, reclaim.go). A layer made before that
	// keeps it until `hibdisk compact`, which converts it.
	Reclaims bool
}

// Stats counts the layer's rows and measures its files.
func (f *File) Stats() (Stats, error) {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable("stats"); err != nil {
		return Stats{}, err
	}
	var s Stats
	var err error
	if s.DataSectors, s.TombstoneSectors, err = f.disk.countRows(); err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	if s.DataBlocks, s.TombstoneBlocks, err = f.hib.countRows(); err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	ps, err := store.PragmaInt(e.conn, "page_size")
	if err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	s.PageSize = int(ps)
	free, err := store.PragmaInt(e.conn, "freelist_count")
	if err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	s.FreeBytes = free * ps
	if s.Reclaims, err = isIncremental(e.conn); err != nil {
		return Stats{}, fmt.Errorf("stats %q: %w", e.path, err)
	}
	if e.release != nil {
		s.FileBytes = e.readerSize // OpenReaderAt: no file of its own
		return s, nil
	}
	for _, p := range []string{e.path, e.path + "-wal"} {
		if st, err := os.Stat(p); err == nil {
			s.FileBytes += st.Size()
		}
	}
	return s, nil
}
