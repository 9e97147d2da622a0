package hibfile

import (
	"bytes"
	"fmt"
	"io"
	"slices"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// registersAlign aligns register blobs, which are packed together.
const registersAlign = 64

// Layout assigns blob offsets: a register blob to every process with
// RegistersSize > 0, and content space to every mapping for which store
// returns true (the others get none). A process or mapping that prev (the
// snapshot below, or nil) stored under the same pid and address with at
// least the same size keeps its offset, so unchanged content lands on
// unchanged blocks of the hibernate file and a stacked layer stores only
// what changed. Everything else is placed after prev's blob_size:
// mappings aligned to blockSize, register blobs packed at 64 bytes.
func Layout(s *Snapshot, prev *Snapshot, blockSize int64, store func(pid int64, m Mapping) bool) {
	type key struct{ pid, addr int64 }
	oldMaps := map[key]disklayer.Range{}
	oldRegs := map[int64]disklayer.Range{}
	var next int64
	if prev != nil && prev.BlobFilePath == "" {
		for _, p := range prev.Processes {
			if p.RegistersOffset != nil {
				oldRegs[p.PID] = disklayer.Range{Off: *p.RegistersOffset, Len: p.RegistersSize}
			}
			for _, m := range p.Mappings {
				if m.BlobOffset != nil {
					oldMaps[key{p.PID, m.VirtualAddr}] = disklayer.Range{Off: *m.BlobOffset, Len: m.Size}
				}
			}
		}
		next = max(prev.BlobSize, prev.blobEnd())
	}
	alloc := func(size, align int64) int64 {
		next = (next + align - 1) / align * align
		off := next
		next += size
		return off
	}
	order := make([]int, len(s.Processes))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmpInt(s.Processes[a].PID, s.Processes[b].PID) })
	for _, i := range order {
		p := &s.Processes[i]
		p.RegistersOffset = nil
		if p.RegistersSize <= 0 {
			continue
		}
		if r, ok := oldRegs[p.PID]; ok && r.Len >= p.RegistersSize {
			p.RegistersOffset = ptr(r.Off)
			continue
		}
		p.RegistersOffset = ptr(alloc(p.RegistersSize, registersAlign))
	}
	for _, i := range order {
		p := &s.Processes[i]
		slices.SortFunc(p.Mappings, func(a, b Mapping) int { return cmpInt(a.VirtualAddr, b.VirtualAddr) })
		for j := range p.Mappings {
			m := &p.Mappings[j]
			m.BlobOffset = nil
			if !store(p.PID, *m) {
				continue
			}
			if r, ok := oldMaps[key{p.PID, m.VirtualAddr}]; ok && r.Len >= m.Size {
				m.BlobOffset = ptr(r.Off)
				continue
			}
			m.BlobOffset = ptr(alloc(m.Size, blockSize))
		}
	}
}

// UnreadableImage is implemented by images that can fail to read some
// content and substitute zeros (a live process's memory): when Unreadable
// reports bytes after Save has read everything, the snapshot is saved as
// StatusPartial.
type UnreadableImage interface {
	io.ReaderAt
	Unreadable() int64
}

// SaveResult says what Save stored.
type SaveResult struct {
	SnapshotID int64
	// StoredBytes is the content Save read from the image (every range).
	StoredBytes int64
	// ChangedBlocks were written into the top layer (data or tombstone):
	// their content differs from the chain below.
	ChangedBlocks int64
	// UnchangedBlocks equal the chain below and take no space.
	UnchangedBlocks int64
	BlockSize       int64
}

// Save stores s as the snapshot of the top layer of the chain at path, in
// one transaction: the metadata rows, and the content of every blob range,
// read from image at the range's blob offset, into the hibernate file. A
// block whose content equals what the chain below holds is not stored
// (and any row the top held for it is dropped). The top layer must not
// hold a snapshot yet (ErrSnapshotExists). image may be nil when no range
// is stored. Save fills in s.ID, s.LayerUUID, s.BlobSize and
// s.TotalProcesses.
func Save(path string, s *Snapshot, image io.ReaderAt) (SaveResult, error) {
	d, err := diffdisk.Open(path, diffdisk.Options{})
	if err != nil {
		return SaveResult{}, fmt.Errorf("save hibernate snapshot to %q: %w", path, err)
	}
	defer d.Close()
	return SaveChain(d, s, image, nil)
}

// SaveChain is Save into the top layer of the chain d, which its caller
// has open (a machine that serves it): the layer lock lets no second
// writable open of the layer exist, in this process or another. When also
// is not nil it runs inside Save's transaction, after the snapshot's rows
// and blocks are written, so what it adds (a machine's device state)
// commits with them or not at all.
func SaveChain(d *diffdisk.Disk, s *Snapshot, image io.ReaderAt, also func(tx *sqlitelayer.Tx, snapshotID int64) error) (SaveResult, error) {
	return SaveChainIndexed(d, s, image, nil, also)
}

// SaveChainIndexed is SaveChain that asks index (when not nil) whether a
// block equals the chain below before reading the chain below: blocks
// the index knows are compared without any read.
func SaveChainIndexed(d *diffdisk.Disk, s *Snapshot, image io.ReaderAt, index BelowIndex, also func(tx *sqlitelayer.Tx, snapshotID int64) error) (SaveResult, error) {
	top, ok := d.Layer(0).(*sqlitelayer.File)
	if !ok {
		return SaveResult{}, fmt.Errorf("save hibernate snapshot: the chain's top is a raw image: %w", disklayer.ErrNotLayer)
	}
	path := top.Path()
	below, err := hibernateBelow(d, 1)
	if err != nil {
		return SaveResult{}, fmt.Errorf("save hibernate snapshot to %q: %w", path, err)
	}
	var belowLayer disklayer.Layer // stays a nil interface without layers below
	if below != nil {
		// below is not closed: closing it would detach the hibernate
		// views of the chain's layers, which stays open with its caller.
		belowLayer = below
	}
	return saveInto(top, belowLayer, index, s, image, also)
}

// hibernateBelow composes the hibernate files of the chain's hibdisk
// layers from index from down (nil if there are none).
func hibernateBelow(d *diffdisk.Disk, from int) (*diffdisk.Disk, error) {
	var views []disklayer.Layer
	for i := from; i < d.Depth(); i++ {
		f, ok := d.Layer(i).(*sqlitelayer.File)
		if !ok {
			break
		}
		views = append(views, f.Hibernate())
	}
	if len(views) == 0 {
		return nil, nil
	}
	return diffdisk.Compose(diffdisk.Options{ReadOnly: true}, views...)
}

func saveInto(top *sqlitelayer.File, below disklayer.Layer, index BelowIndex, s *Snapshot, image io.ReaderAt, also func(*sqlitelayer.Tx, int64) error) (SaveResult, error) {
	path := top.Path()
	fail := func(err error) (SaveResult, error) {
		return SaveResult{}, fmt.Errorf("save hibernate snapshot to %q: %w", path, err)
	}
	if s.Status == "" {
		s.Status = StatusComplete
	}
	if err := s.validate(); err != nil {
		return fail(err)
	}
	ranges := s.ranges()
	if s.BlobFilePath != "" {
		ranges = nil
	}
	if len(ranges) > 0 && image == nil {
		return fail(fmt.Errorf("snapshot stores %d blob ranges but no image was given: %w", len(ranges), disklayer.ErrInvalid))
	}
	s.BlobSize = 0
	if s.BlobFilePath == "" {
		s.BlobSize = s.blobEnd()
	}
	s.TotalProcesses = int64(len(s.Processes))
	s.LayerUUID = top.Info().UUID
	res := SaveResult{BlockSize: int64(top.SectorSize())}
	err := top.Update("save hibernate snapshot", func(tx *sqlitelayer.Tx) error {
		if err := requireNoSnapshot(tx.Conn()); err != nil {
			return err
		}
		id, err := insertSnapshot(tx.Conn(), s)
		if err != nil {
			return err
		}
		s.ID, res.SnapshotID = id, id
		if err := insertRows(tx.Conn(), s); err != nil {
			return err
		}
		if err := writeBlob(tx, below, index, ranges, image, &res); err != nil {
			return err
		}
		if u, ok := image.(UnreadableImage); ok && u.Unreadable() > 0 && s.Status != StatusPartial {
			s.Status = StatusPartial
			if err := execBind(tx.Conn(), "UPDATE hibernate_snapshot SET status = ?1 WHERE snapshot_id = ?2", s.Status, id); err != nil {
				return err
			}
		}
		if also != nil {
			return also(tx, id)
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	return res, nil
}

func requireNoSnapshot(conn *sqlite3.Conn) error {
	n, err := queryInt(conn, "SELECT count(*) FROM hibernate_snapshot")
	if err != nil {
		return err
	}
	if n > 0 {
		return ErrSnapshotExists
	}
	return nil
}

func insertSnapshot(conn *sqlite3.Conn, s *Snapshot) (int64, error) {
	stmt, _, err := conn.Prepare(`INSERT INTO hibernate_snapshot
 (timestamp, kernel_version, total_processes, total_memory_kb, blob_file_path, layer_uuid, source, status, arch, blob_size)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)`)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	stmt.BindText(1, formatTime(s.Timestamp))
	stmt.BindText(2, s.KernelVersion)
	stmt.BindInt64(3, s.TotalProcesses)
	stmt.BindInt64(4, s.TotalMemoryKB)
	if s.BlobFilePath == "" {
		stmt.BindNull(5)
	} else {
		stmt.BindText(5, s.BlobFilePath)
	}
	stmt.BindText(6, s.LayerUUID)
	stmt.BindText(7, s.Source)
	stmt.BindText(8, s.Status)
	stmt.BindText(9, s.Arch)
	stmt.BindInt64(10, s.BlobSize)
	if err := stmt.Exec(); err != nil {
		return 0, fmt.Errorf("insert snapshot: %w", err)
	}
	return conn.LastInsertRowID(), nil
}

func bindOptInt(stmt *sqlite3.Stmt, i int, v *int64) {
	if v == nil {
		stmt.BindNull(i)
	} else {
		stmt.BindInt64(i, *v)
	}
}

// insertRows inserts the processes and their rows with four prepared
// statements.
func insertRows(conn *sqlite3.Conn, s *Snapshot) error {
	var stmts [4]*sqlite3.Stmt
	for i, sql := range []string{
		`INSERT INTO hibernate_processes (snapshot_id, pid, parent_pid, name, state, registers_offset, registers_size, memory_start, memory_size, cwd_path) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)`,
		`INSERT INTO hibernate_memory_map (snapshot_id, pid, virtual_addr, size, physical_addr, page_size, permissions, flags, blob_offset, path, file_offset) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)`,
		`INSERT INTO hibernate_files (snapshot_id, pid, fd, path, position, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6)`,
		`INSERT INTO hibernate_signals (snapshot_id, pid, signal_number, handler_address, disposition, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6)`,
	} {
		stmt, _, err := conn.Prepare(sql)
		if err != nil {
			return err
		}
		defer stmt.Close()
		stmts[i] = stmt
	}
	procs, maps, files, sigs := stmts[0], stmts[1], stmts[2], stmts[3]
	id := s.ID
	for _, p := range s.Processes {
		procs.BindInt64(1, id)
		procs.BindInt64(2, p.PID)
		procs.BindInt64(3, p.ParentPID)
		procs.BindText(4, p.Name)
		procs.BindText(5, p.State)
		bindOptInt(procs, 6, p.RegistersOffset)
		procs.BindInt64(7, p.RegistersSize)
		procs.BindInt64(8, p.MemoryStart)
		procs.BindInt64(9, p.MemorySize)
		procs.BindText(10, p.CwdPath)
		if err := procs.Exec(); err != nil {
			return fmt.Errorf("insert process %d: %w", p.PID, err)
		}
		for _, m := range p.Mappings {
			maps.BindInt64(1, id)
			maps.BindInt64(2, p.PID)
			maps.BindInt64(3, m.VirtualAddr)
			maps.BindInt64(4, m.Size)
			bindOptInt(maps, 5, m.PhysicalAddr)
			maps.BindInt64(6, m.PageSize)
			maps.BindText(7, m.Permissions)
			maps.BindText(8, m.Flags)
			bindOptInt(maps, 9, m.BlobOffset)
			maps.BindText(10, m.Path)
			maps.BindInt64(11, m.FileOffset)
			if err := maps.Exec(); err != nil {
				return fmt.Errorf("insert mapping %#x of pid %d: %w", m.VirtualAddr, p.PID, err)
			}
		}
		for _, f := range p.Files {
			files.BindInt64(1, id)
			files.BindInt64(2, p.PID)
			files.BindInt64(3, f.FD)
			files.BindText(4, f.Path)
			files.BindInt64(5, f.Position)
			files.BindText(6, f.Flags)
			if err := files.Exec(); err != nil {
				return fmt.Errorf("insert fd %d of pid %d: %w", f.FD, p.PID, err)
			}
		}
		for _, g := range p.Signals {
			sigs.BindInt64(1, id)
			sigs.BindInt64(2, p.PID)
			sigs.BindInt64(3, g.Number)
			bindOptInt(sigs, 4, g.HandlerAddress)
			sigs.BindText(5, g.Disposition)
			sigs.BindText(6, g.Flags)
			if err := sigs.Exec(); err != nil {
				return fmt.Errorf("insert signal %d of pid %d: %w", g.Number, p.PID, err)
			}
		}
	}
	return nil
}

// chunkBytes bounds the memory Save uses per step of the blob.
const chunkBytes = 1 << 20

// writeBlob stores the ranges' content block by block: blocks the ranges
// touch are built (zeros outside the ranges), compared with the chain
// below, and written only where they differ. Ranges are sorted and do not
// overlap.
func writeBlob(tx *sqlitelayer.Tx, below disklayer.Layer, index BelowIndex, ranges []blobRange, image io.ReaderAt, res *SaveResult) error {
	bs := res.BlockSize
	// Block-aligned spans covering the ranges, merged.
	var spans []disklayer.Range
	for _, r := range ranges {
		if r.Len == 0 {
			continue
		}
		start, end := r.Off/bs*bs, (r.End()+bs-1)/bs*bs
		if n := len(spans); n > 0 && start <= spans[n-1].End() {
			spans[n-1].Len = max(spans[n-1].End(), end) - spans[n-1].Off
			continue
		}
		spans = append(spans, disklayer.Range{Off: start, Len: end - start})
	}
	buf := make([]byte, chunkBytes)
	old := make([]byte, chunkBytes)
	next := 0 // first range that may still intersect
	for _, sp := range spans {
		for off := sp.Off; off < sp.End(); off += chunkBytes {
			n := min(chunkBytes, sp.End()-off)
			chunk := buf[:n]
			for next < len(ranges) && ranges[next].End() <= off {
				next++
			}
			filled := off // chunk is set up to here: zeros between ranges
			for i := next; i < len(ranges) && ranges[i].Off < off+n; i++ {
				r := ranges[i]
				lo, hi := max(r.Off, off), min(r.End(), off+n)
				if hi <= lo {
					continue
				}
				clear(chunk[filled-off : lo-off])
				got, err := image.ReadAt(chunk[lo-off:hi-off], lo)
				if err != nil && err != io.EOF {
					return fmt.Errorf("read %s at blob offset %#x: %w", r.what, lo, err)
				}
				clear(chunk[lo-off+int64(got) : hi-off]) // past the image's end
				res.StoredBytes += hi - lo
				filled = hi
			}
			clear(chunk[filled-off:])
			if err := storeChunk(tx, below, index, chunk, old, off, bs, res); err != nil {
				return err
			}
		}
	}
	return nil
}

// storeChunk writes the blocks of chunk (at off) that differ from below
// (zeros when nothing is below) and drops the top's rows for the others,
// in runs. With an index that knows every block of the chunk, below is
// not read.
func storeChunk(tx *sqlitelayer.Tx, below disklayer.Layer, index BelowIndex, chunk, old []byte, off, bs int64, res *SaveResult) error {
	n := int64(len(chunk))
	old = old[:n]
	var differs func(b int64) bool
	if below != nil && index != nil {
		same := make([]bool, n/bs)
		known := true
		for b := int64(0); b < n && known; b += bs {
			same[b/bs], known = index.Same(chunk[b:b+bs], off+b)
		}
		if known {
			differs = func(b int64) bool { return !same[b/bs] }
		}
	}
	if differs == nil {
		if below == nil {
			clear(old)
		} else if _, err := below.ReadAt(old, off); err != nil {
			return fmt.Errorf("read the hibernate file below at %#x: %w", off, err)
		}
		differs = func(b int64) bool { return !bytes.Equal(chunk[b:b+bs], old[b:b+bs]) }
	}
	runStart, runChanged := int64(0), false
	flush := func(end int64) error {
		if end == runStart {
			return nil
		}
		if runChanged {
			res.ChangedBlocks += (end - runStart) / bs
			return tx.WriteHibernate(chunk[runStart:end], off+runStart)
		}
		res.UnchangedBlocks += (end - runStart) / bs
		return tx.ForgetHibernate(off+runStart, end-runStart)
	}
	for b := int64(0); b < n; b += bs {
		changed := differs(b)
		if b > runStart && changed != runChanged {
			if err := flush(b); err != nil {
				return err
			}
			runStart = b
		}
		runChanged = changed
	}
	return flush(n)
}
