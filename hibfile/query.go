package hibfile

import (
	"fmt"
	"iter"
	"slices"
	"strings"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Chain is a layer chain opened read-only for its hibernate snapshots.
type Chain struct {
	path string
	disk *diffdisk.Disk
	open []*View
	hib  *diffdisk.Disk // the hibernate file view OSImage takes (once)
}

// Open opens the chain whose top layer is at path, read-only. Parents are
// verified as for any chain (diffdisk.Open).
func Open(path string) (*Chain, error) {
	d, err := diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open hibernate file of %q: %w", path, err)
	}
	return &Chain{path: path, disk: d}, nil
}

// Close closes the chain and every View taken from it.
func (c *Chain) Close() error {
	for _, v := range c.open {
		v.blob.Close()
	}
	c.open = nil
	if c.hib != nil {
		c.hib.Close()
		c.hib = nil
	}
	return c.disk.Close()
}

// Path is the top layer's file name.
func (c *Chain) Path() string { return c.path }

// Latest returns the newest snapshot visible in the chain: the snapshot of
// the topmost layer that holds one (ErrNoSnapshot if none does). Its blobs
// read through the chain from that layer down.
func (c *Chain) Latest() (*View, error) {
	for i := 0; i < c.disk.Depth(); i++ {
		f, ok := c.disk.Layer(i).(*sqlitelayer.File)
		if !ok {
			break
		}
		s, found, err := latestRow(f)
		if err != nil {
			return nil, fmt.Errorf("read hibernate snapshot of %q: %w", f.Path(), err)
		}
		if !found {
			continue
		}
		blob, err := hibernateBelow(c.disk, i)
		if err != nil {
			return nil, fmt.Errorf("open hibernate file of %q: %w", f.Path(), err)
		}
		v := &View{file: f, depth: i, snap: s, blob: blob}
		for j := i; j < c.disk.Depth(); j++ {
			l, ok := c.disk.Layer(j).(*sqlitelayer.File)
			if !ok {
				break // as in hibernateBelow
			}
			v.layers = append(v.layers, l)
		}
		c.open = append(c.open, v)
		return v, nil
	}
	return nil, fmt.Errorf("%q: %w", c.path, ErrNoSnapshot)
}

// hasTables reports whether the layer has the hibernate metadata tables
// (schema version 2). A version 1 layer opened read-only has none; if it
// holds the seed's tables, reading them needs a migration first.
func hasTables(conn *sqlite3.Conn) (bool, error) {
	v, err := store.PragmaInt(conn, "user_version")
	if err != nil {
		return false, err
	}
	if v >= schema.Hibernate {
		return true, nil
	}
	seed, err := queryInt(conn, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'hibernate_snapshot'")
	if err != nil {
		return false, err
	}
	if seed > 0 {
		return false, fmt.Errorf("the layer holds the seed's v0 hibernate tables: run hibdisk hib migrate (or hibdisk check --repair) on it: %w", ErrNeedsMigration)
	}
	return false, nil
}

const snapshotColumns = `snapshot_id, timestamp, kernel_version, total_processes, total_memory_kb, blob_file_path, layer_uuid, source, status, arch, blob_size`

func scanSnapshot(stmt *sqlite3.Stmt) (Snapshot, error) {
	s := Snapshot{
		ID:             stmt.ColumnInt64(0),
		KernelVersion:  stmt.ColumnText(2),
		TotalProcesses: stmt.ColumnInt64(3),
		TotalMemoryKB:  stmt.ColumnInt64(4),
		BlobFilePath:   stmt.ColumnText(5),
		LayerUUID:      stmt.ColumnText(6),
		Source:         stmt.ColumnText(7),
		Status:         stmt.ColumnText(8),
		Arch:           stmt.ColumnText(9),
		BlobSize:       stmt.ColumnInt64(10),
	}
	t, err := parseTime(stmt.ColumnText(1))
	if err != nil {
		return s, fmt.Errorf("snapshot %d: %w", s.ID, err)
	}
	s.Timestamp = t
	return s, nil
}

// latestRow reads the layer's newest snapshot row.
func latestRow(f *sqlitelayer.File) (s Snapshot, found bool, err error) {
	err = f.View("read hibernate snapshot", func(conn *sqlite3.Conn) error {
		ok, err := hasTables(conn)
		if err != nil || !ok {
			return err
		}
		stmt, _, err := conn.Prepare(`SELECT ` + snapshotColumns + ` FROM hibernate_snapshot ORDER BY timestamp DESC, snapshot_id DESC LIMIT 1`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		if stmt.Step() {
			found = true
			s, err = scanSnapshot(stmt)
			return err
		}
		return stmt.Err()
	})
	return s, found, err
}

// View is one snapshot of a chain: its rows in the layer that holds it,
// its blobs in the chain's hibernate file from that layer down. It is
// valid until its Chain is closed.
type View struct {
	file  *sqlitelayer.File
	depth int
	snap  Snapshot
	blob  *diffdisk.Disk
	// layers are the hibdisk layers whose hibernate files blob composes,
	// from file down.
	layers []*sqlitelayer.File
}

// Snapshot returns the snapshot row (Processes is nil: see Load).
func (v *View) Snapshot() Snapshot { return v.snap }

// LayerPath is the file of the layer that holds the snapshot.
func (v *View) LayerPath() string { return v.file.Path() }

// LayerDepth is that layer's position in the chain (0 = top).
func (v *View) LayerDepth() int { return v.depth }

func (v *View) query(op string, fn func(conn *sqlite3.Conn) error) error {
	return v.file.View(op, fn)
}

const processColumns = `pid, parent_pid, name, state, registers_offset, registers_size, memory_start, memory_size, cwd_path`

func scanProcess(stmt *sqlite3.Stmt, off int) Process {
	return Process{
		PID:             stmt.ColumnInt64(off),
		ParentPID:       stmt.ColumnInt64(off + 1),
		Name:            stmt.ColumnText(off + 2),
		State:           stmt.ColumnText(off + 3),
		RegistersOffset: optInt(stmt, off+4),
		RegistersSize:   stmt.ColumnInt64(off + 5),
		MemoryStart:     stmt.ColumnInt64(off + 6),
		MemorySize:      stmt.ColumnInt64(off + 7),
		CwdPath:         stmt.ColumnText(off + 8),
	}
}

const mappingColumns = `virtual_addr, size, physical_addr, page_size, permissions, flags, blob_offset, path, file_offset`

func scanMapping(stmt *sqlite3.Stmt, off int) Mapping {
	return Mapping{
		VirtualAddr:  stmt.ColumnInt64(off),
		Size:         stmt.ColumnInt64(off + 1),
		PhysicalAddr: optInt(stmt, off+2),
		PageSize:     stmt.ColumnInt64(off + 3),
		Permissions:  stmt.ColumnText(off + 4),
		Flags:        stmt.ColumnText(off + 5),
		BlobOffset:   optInt(stmt, off+6),
		Path:         stmt.ColumnText(off + 7),
		FileOffset:   stmt.ColumnInt64(off + 8),
	}
}

const fileColumns = `fd, path, position, flags`

func scanFile(stmt *sqlite3.Stmt, off int) File {
	return File{FD: stmt.ColumnInt64(off), Path: stmt.ColumnText(off + 1), Position: stmt.ColumnInt64(off + 2), Flags: stmt.ColumnText(off + 3)}
}

const signalColumns = `signal_number, handler_address, disposition, flags`

func scanSignal(stmt *sqlite3.Stmt, off int) Signal {
	return Signal{Number: stmt.ColumnInt64(off), HandlerAddress: optInt(stmt, off+1), Disposition: stmt.ColumnText(off + 2), Flags: stmt.ColumnText(off + 3)}
}

// rows runs sql with args and calls scan for each row.
func rows(conn *sqlite3.Conn, sql string, scan func(*sqlite3.Stmt), args ...any) error {
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return err
	}
	defer stmt.Close()
	if err := bindAll(stmt, args); err != nil {
		return err
	}
	for stmt.Step() {
		scan(stmt)
	}
	return stmt.Err()
}

// Processes returns the snapshot's processes by pid, without their rows.
func (v *View) Processes() ([]Process, error) {
	var out []Process
	err := v.query("list processes", func(conn *sqlite3.Conn) error {
		return rows(conn, `SELECT `+processColumns+` FROM hibernate_processes WHERE snapshot_id = ?1 ORDER BY pid`,
			func(s *sqlite3.Stmt) { out = append(out, scanProcess(s, 0)) }, v.snap.ID)
	})
	return out, err
}

// Process returns one process with its mappings, files and signals.
func (v *View) Process(pid int64) (Process, error) {
	var p Process
	found := false
	err := v.query("read process", func(conn *sqlite3.Conn) error {
		if err := rows(conn, `SELECT `+processColumns+` FROM hibernate_processes WHERE snapshot_id = ?1 AND pid = ?2`,
			func(s *sqlite3.Stmt) { p, found = scanProcess(s, 0), true }, v.snap.ID, pid); err != nil {
			return err
		}
		if !found {
			return nil
		}
		if err := rows(conn, `SELECT `+mappingColumns+` FROM hibernate_memory_map WHERE snapshot_id = ?1 AND pid = ?2 ORDER BY virtual_addr`,
			func(s *sqlite3.Stmt) { p.Mappings = append(p.Mappings, scanMapping(s, 0)) }, v.snap.ID, pid); err != nil {
			return err
		}
		if err := rows(conn, `SELECT `+fileColumns+` FROM hibernate_files WHERE snapshot_id = ?1 AND pid = ?2 ORDER BY fd`,
			func(s *sqlite3.Stmt) { p.Files = append(p.Files, scanFile(s, 0)) }, v.snap.ID, pid); err != nil {
			return err
		}
		return rows(conn, `SELECT `+signalColumns+` FROM hibernate_signals WHERE snapshot_id = ?1 AND pid = ?2 ORDER BY signal_number`,
			func(s *sqlite3.Stmt) { p.Signals = append(p.Signals, scanSignal(s, 0)) }, v.snap.ID, pid)
	})
	if err != nil {
		return Process{}, err
	}
	if !found {
		return Process{}, fmt.Errorf("pid %d in %q: %w", pid, v.LayerPath(), ErrNoProcess)
	}
	return p, nil
}

// Load returns the whole snapshot: the row and every process with its
// rows, processes by pid, mappings by address, files by fd, signals by
// number.
func (v *View) Load() (*Snapshot, error) {
	s := v.snap
	s.Processes = nil
	index := map[int64]int{}
	at := func(pid int64) *Process {
		if i, ok := index[pid]; ok {
			return &s.Processes[i]
		}
		return nil // an orphan row: Check reports it
	}
	err := v.query("load snapshot", func(conn *sqlite3.Conn) error {
		if err := rows(conn, `SELECT `+processColumns+` FROM hibernate_processes WHERE snapshot_id = ?1 ORDER BY pid`, func(st *sqlite3.Stmt) {
			index[st.ColumnInt64(0)] = len(s.Processes)
			s.Processes = append(s.Processes, scanProcess(st, 0))
		}, s.ID); err != nil {
			return err
		}
		if err := rows(conn, `SELECT pid, `+mappingColumns+` FROM hibernate_memory_map WHERE snapshot_id = ?1 ORDER BY pid, virtual_addr`, func(st *sqlite3.Stmt) {
			if p := at(st.ColumnInt64(0)); p != nil {
				p.Mappings = append(p.Mappings, scanMapping(st, 1))
			}
		}, s.ID); err != nil {
			return err
		}
		if err := rows(conn, `SELECT pid, `+fileColumns+` FROM hibernate_files WHERE snapshot_id = ?1 ORDER BY pid, fd`, func(st *sqlite3.Stmt) {
			if p := at(st.ColumnInt64(0)); p != nil {
				p.Files = append(p.Files, scanFile(st, 1))
			}
		}, s.ID); err != nil {
			return err
		}
		return rows(conn, `SELECT pid, `+signalColumns+` FROM hibernate_signals WHERE snapshot_id = ?1 ORDER BY pid, signal_number`, func(st *sqlite3.Stmt) {
			if p := at(st.ColumnInt64(0)); p != nil {
				p.Signals = append(p.Signals, scanSignal(st, 1))
			}
		}, s.ID)
	})
	if err != nil {
		return nil, err
	}
	return &s, nil
}

// ReadBlob reads len(p) bytes of the hibernate file at off, through the
// chain from the snapshot's layer down.
func (v *View) ReadBlob(p []byte, off int64) error {
	if v.snap.BlobFilePath != "" {
		return fmt.Errorf("read blob of %q: the snapshot's blob is the external file %q, not the hibernate file: %w", v.LayerPath(), v.snap.BlobFilePath, disklayer.ErrInvalid)
	}
	if _, err := v.blob.ReadAt(p, off); err != nil {
		return fmt.Errorf("read blob of %q at %#x: %w", v.LayerPath(), off, err)
	}
	return nil
}

// TreeNode is a process in tree order.
type TreeNode struct {
	Process
	Depth int // 0 for a root: a process whose parent is not in the snapshot
}

// ErrCycle: the processes' parent links form a cycle, so the tree has no
// root for them. It wraps disklayer.ErrCorrupt.
var ErrCycle = fmt.Errorf("process tree has a cycle: %w", disklayer.ErrCorrupt)

// Tree orders processes parent-first, depth-first, children by pid, like
// ps -ef --forest. Processes whose parent_pid is not in the list are
// roots. A cycle of parent links is an error wrapping ErrCycle.
func Tree(procs []Process) ([]TreeNode, error) {
	byPID := make(map[int64]bool, len(procs))
	for _, p := range procs {
		byPID[p.PID] = true
	}
	children := map[int64][]int{}
	var roots []int
	for i, p := range procs {
		if p.ParentPID == p.PID || !byPID[p.ParentPID] {
			roots = append(roots, i)
			continue
		}
		children[p.ParentPID] = append(children[p.ParentPID], i)
	}
	byPIDOrder := func(a, b int) int { return cmpInt(procs[a].PID, procs[b].PID) }
	slices.SortFunc(roots, byPIDOrder)
	out := make([]TreeNode, 0, len(procs))
	var walk func(i, depth int)
	walk = func(i, depth int) {
		out = append(out, TreeNode{Process: procs[i], Depth: depth})
		kids := children[procs[i].PID]
		slices.SortFunc(kids, byPIDOrder)
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	if len(out) != len(procs) {
		seen := make(map[int64]bool, len(out))
		for _, n := range out {
			seen[n.PID] = true
		}
		var cyc []string
		for _, p := range procs {
			if !seen[p.PID] {
				cyc = append(cyc, fmt.Sprint(p.PID))
			}
		}
		return out, fmt.Errorf("pids %s: %w", strings.Join(cyc, ", "), ErrCycle)
	}
	return out, nil
}

// RestoreStep is what a restorer needs for one process, in restore order.
type RestoreStep struct {
	Depth   int
	Process Process // with Mappings, Files and Signals
	// Content lists the stored mappings with the hibernate file range
	// that holds each one's bytes (read them with View.ReadBlob).
	Content []MappingContent
	// Registers is the register blob (nil if unknown); its format is the
	// snapshot's Arch.
	Registers []byte
}

// MappingContent pairs a mapping with its stored bytes' range.
type MappingContent struct {
	Mapping Mapping
	Blob    disklayer.Range
}

// RestorePlan walks the process tree parent-first (a parent is restored
// before its children) and yields each process with its mappings and
// their blob ranges, files, signal handlers and register blob.
func (v *View) RestorePlan() iter.Seq2[RestoreStep, error] {
	return func(yield func(RestoreStep, error) bool) {
		procs, err := v.Processes()
		if err != nil {
			yield(RestoreStep{}, err)
			return
		}
		tree, err := Tree(procs)
		if err != nil {
			yield(RestoreStep{}, fmt.Errorf("restore plan of %q: %w", v.LayerPath(), err))
			return
		}
		for _, n := range tree {
			p, err := v.Process(n.PID)
			if err != nil {
				yield(RestoreStep{}, err)
				return
			}
			step := RestoreStep{Depth: n.Depth, Process: p}
			for _, m := range p.Mappings {
				if m.BlobOffset != nil {
					step.Content = append(step.Content, MappingContent{Mapping: m, Blob: disklayer.Range{Off: *m.BlobOffset, Len: m.Size}})
				}
			}
			if p.RegistersOffset != nil && p.RegistersSize > 0 {
				step.Registers = make([]byte, p.RegistersSize)
				if err := v.ReadBlob(step.Registers, *p.RegistersOffset); err != nil {
					yield(RestoreStep{}, err)
					return
				}
			}
			if !yield(step, nil) {
				return
			}
		}
	}
}

// Latest opens the chain at path and returns its newest snapshot, fully
// loaded, for callers that need no blob reads.
func Latest(path string) (*Snapshot, error) {
	c, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	v, err := c.Latest()
	if err != nil {
		return nil, err
	}
	return v.Load()
}

// BlockSize is the block size of the chain's hibernate file (the sector
// size of the layer that holds the snapshot).
func (v *View) BlockSize() int64 { return int64(v.file.SectorSize()) }

// StoredBlocks calls fn for every block of the hibernate file below end
// that a layer from the snapshot's down stores, straight from the rows,
// in ascending order: the block's offset and its content (nil for a
// tombstone, which reads as zeros), the topmost layer's row for each
// block and no other. Blocks no layer stores (zeros) are not visited.
// data is only valid during the call. It reads each layer's rows once,
// merging the layers' ordered scans, without composing the chain block
// by block: a resume rebuilds RAM this way, and since the blocks come in
// order it can hash them as they come. The scans run with a small page
// cache: a page read once is not kept, so a scan does not grow SQLite's
// memory by the size of the hibernate file (on these machines each new
// page of it cost a page fault of ~11 µs). A layer whose block size
// differs from the snapshot's is ErrInvalid (ReadBlob reads such chains).
func (v *View) StoredBlocks(end int64, fn func(off int64, data []byte) error) error {
	if v.snap.BlobFilePath != "" {
		return fmt.Errorf("read blob of %q: the snapshot's blob is the external file %q, not the hibernate file: %w", v.LayerPath(), v.snap.BlobFilePath, disklayer.ErrInvalid)
	}
	bs := v.BlockSize()
	blocks := (end + bs - 1) / bs
	for _, f := range v.layers {
		if int64(f.SectorSize()) != bs {
			return fmt.Errorf("read blob of %q: %q has %d-byte blocks, the snapshot %d: %w", v.LayerPath(), f.Path(), f.SectorSize(), bs, disklayer.ErrInvalid)
		}
	}
	scans := make([]*rowScan, len(v.layers))
	// Each layer's scan runs inside that layer's View; the merge runs
	// inside the last one.
	var open func(i int) error
	open = func(i int) error {
		if i == len(scans) {
			return mergeScans(scans, bs, fn)
		}
		f := v.layers[i]
		return f.View("read hibernate rows", func(conn *sqlite3.Conn) (err error) {
			cache, err := queryInt(conn, "PRAGMA cache_size")
			if err != nil {
				return err
			}
			if err := conn.Exec("PRAGMA cache_size=-256"); err != nil {
				return err
			}
			defer func() {
				if rerr := conn.Exec(fmt.Sprintf("PRAGMA cache_size=%d", cache)); err == nil {
					err = rerr
				}
			}()
			stmt, _, err := conn.Prepare("SELECT block, data FROM hibernate_blocks WHERE block >= 0 AND block < ?1 ORDER BY block")
			if err != nil {
				return err
			}
			defer stmt.Close()
			stmt.BindInt64(1, blocks)
			scans[i] = &rowScan{stmt: stmt, path: f.Path(), bs: bs}
			if err := scans[i].next(); err != nil {
				return err
			}
			return open(i + 1)
		})
	}
	if err := open(0); err != nil {
		return fmt.Errorf("read blob of %q: %w", v.LayerPath(), err)
	}
	return nil
}

// rowScan is one layer's ordered scan of its hibernate rows.
type rowScan struct {
	stmt  *sqlite3.Stmt
	path  string
	bs    int64
	block int64 // the current row's block; valid unless done
	done  bool
}

// next steps to the next row.
func (r *rowScan) next() error {
	if !r.stmt.Step() {
		r.done = true
		return r.stmt.Err()
	}
	r.block = r.stmt.ColumnInt64(0)
	return nil
}

// data is the current row's content (nil for a tombstone).
func (r *rowScan) data() ([]byte, error) {
	if r.stmt.ColumnType(1) == sqlite3.NULL {
		return nil, nil
	}
	data := r.stmt.ColumnRawBlob(1)
	if int64(len(data)) != r.bs {
		return nil, fmt.Errorf("%q hibernate_blocks block %d holds %d bytes, want %d: %w", r.path, r.block, len(data), r.bs, disklayer.ErrCorrupt)
	}
	return data, nil
}

// mergeScans passes the rows of scans (top layer first) to fn in block
// order, the topmost row of each block only.
func mergeScans(scans []*rowScan, bs int64, fn func(off int64, data []byte) error) error {
	for {
		var top *rowScan // the topmost scan at the lowest block
		for _, r := range scans {
			if !r.done && (top == nil || r.block < top.block) {
				top = r
			}
		}
		if top == nil {
			return nil
		}
		b := top.block
		data, err := top.data()
		if err != nil {
			return err
		}
		if err := fn(b*bs, data); err != nil {
			return err
		}
		for _, r := range scans {
			if !r.done && r.block == b {
				if err := r.next(); err != nil {
					return err
				}
			}
		}
	}
}
