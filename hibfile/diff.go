package hibfile

import (
	"bytes"
	"fmt"
	"strconv"
)

// Diff is what changed from snapshot A to snapshot B. JSON field names
// are stable (`hibdisk hib diff --json`).
type Diff struct {
	ProcessesAdded   []ProcessRef    `json:"processes_added"`
	ProcessesRemoved []ProcessRef    `json:"processes_removed"`
	ProcessesChanged []ProcessChange `json:"processes_changed"`
	MappingsAdded    []MappingRef    `json:"mappings_added"`
	MappingsRemoved  []MappingRef    `json:"mappings_removed"`
	MappingsChanged  []MappingChange `json:"mappings_changed"`
	// PagesChanged and BytesChanged sum the content changes of mappings
	// stored in both snapshots (BytesChanged counts whole pages).
	PagesChanged   int64          `json:"pages_changed"`
	BytesChanged   int64          `json:"bytes_changed"`
	FilesAdded     []FileRef      `json:"files_added"`
	FilesRemoved   []FileRef      `json:"files_removed"`
	FilesChanged   []FileChange   `json:"files_changed"`
	SignalsAdded   []SignalRef    `json:"signals_added"`
	SignalsRemoved []SignalRef    `json:"signals_removed"`
	SignalsChanged []SignalChange `json:"signals_changed"`
}

// Empty reports whether the snapshots are the same.
func (d *Diff) Empty() bool {
	return len(d.ProcessesAdded)+len(d.ProcessesRemoved)+len(d.ProcessesChanged)+
		len(d.MappingsAdded)+len(d.MappingsRemoved)+len(d.MappingsChanged)+
		len(d.FilesAdded)+len(d.FilesRemoved)+len(d.FilesChanged)+
		len(d.SignalsAdded)+len(d.SignalsRemoved)+len(d.SignalsChanged) == 0
}

// FieldChange is one column that differs.
type FieldChange struct {
	Field string `json:"field"`
	Old   string `json:"old"`
	New   string `json:"new"`
}

type ProcessRef struct {
	PID  int64  `json:"pid"`
	Name string `json:"name"`
}

type ProcessChange struct {
	PID     int64         `json:"pid"`
	Name    string        `json:"name"`
	Changes []FieldChange `json:"changes"`
}

type MappingRef struct {
	PID     int64   `json:"pid"`
	Mapping Mapping `json:"mapping"`
}

type MappingChange struct {
	PID          int64         `json:"pid"`
	VirtualAddr  int64         `json:"virtual_addr"`
	Path         string        `json:"path"`
	Changes      []FieldChange `json:"changes"`
	PagesChanged int64         `json:"pages_changed"`
	BytesChanged int64         `json:"bytes_changed"`
}

type FileRef struct {
	PID  int64 `json:"pid"`
	File File  `json:"file"`
}

type FileChange struct {
	PID     int64         `json:"pid"`
	FD      int64         `json:"fd"`
	Changes []FieldChange `json:"changes"`
}

type SignalRef struct {
	PID    int64  `json:"pid"`
	Signal Signal `json:"signal"`
}

type SignalChange struct {
	PID     int64         `json:"pid"`
	Number  int64         `json:"signal_number"`
	Changes []FieldChange `json:"changes"`
}

func optString(v *int64) string {
	if v == nil {
		return "unknown"
	}
	return fmt.Sprintf("%#x", *v)
}

type fieldDiffer struct{ out []FieldChange }

func (f *fieldDiffer) cmp(field, a, b string) {
	if a != b {
		f.out = append(f.out, FieldChange{field, a, b})
	}
}

func (f *fieldDiffer) num(field string, a, b int64) {
	f.cmp(field, strconv.FormatInt(a, 10), strconv.FormatInt(b, 10))
}

// Compare diffs snapshot a against b: processes by pid, mappings by (pid,
// address), files by (pid, fd), signals by (pid, number), and for
// mappings stored in both, their content page by page through each
// snapshot's own hibernate file. The snapshots may come from one chain or
// from unrelated files.
func Compare(a, b *View) (*Diff, error) {
	sa, err := a.Load()
	if err != nil {
		return nil, err
	}
	sb, err := b.Load()
	if err != nil {
		return nil, err
	}
	d := &Diff{}
	err = matchByKey(sa.Processes, sb.Processes, func(p *Process) int64 { return p.PID },
		func(p *Process) { d.ProcessesRemoved = append(d.ProcessesRemoved, ProcessRef{p.PID, p.Name}) },
		func(q *Process) { d.ProcessesAdded = append(d.ProcessesAdded, ProcessRef{q.PID, q.Name}) },
		func(p, q *Process) error { return compareProcess(a, b, p, q, d) })
	if err != nil {
		return nil, err
	}
	return d, nil
}

func compareProcess(a, b *View, p, q *Process, d *Diff) error {
	var f fieldDiffer
	f.cmp("name", p.Name, q.Name)
	f.cmp("state", p.State, q.State)
	f.cmp("cwd_path", p.CwdPath, q.CwdPath)
	f.num("parent_pid", p.ParentPID, q.ParentPID)
	f.num("memory_start", p.MemoryStart, q.MemoryStart)
	f.num("memory_size", p.MemorySize, q.MemorySize)
	ra, err := readRegisters(a, p)
	if err != nil {
		return err
	}
	rb, err := readRegisters(b, q)
	if err != nil {
		return err
	}
	if !bytes.Equal(ra, rb) {
		describe := func(r []byte) string {
			if r == nil {
				return "unknown"
			}
			return fmt.Sprintf("%d bytes", len(r))
		}
		old, new := describe(ra), describe(rb)
		if old == new {
			new += " (different content)"
		}
		f.cmp("registers", old, new)
	}
	if len(f.out) > 0 {
		d.ProcessesChanged = append(d.ProcessesChanged, ProcessChange{q.PID, q.Name, f.out})
	}
	if err := compareMappings(a, b, p, q, d); err != nil {
		return err
	}
	compareFiles(p, q, d)
	compareSignals(p, q, d)
	return nil
}

func readRegisters(v *View, p *Process) ([]byte, error) {
	if p.RegistersOffset == nil || p.RegistersSize == 0 || v.snap.BlobFilePath != "" {
		return nil, nil
	}
	buf := make([]byte, p.RegistersSize)
	return buf, v.ReadBlob(buf, *p.RegistersOffset)
}

func compareMappings(a, b *View, p, q *Process, d *Diff) error {
	return matchByKey(p.Mappings, q.Mappings, func(m *Mapping) int64 { return m.VirtualAddr },
		func(m *Mapping) { d.MappingsRemoved = append(d.MappingsRemoved, MappingRef{p.PID, *m}) },
		func(n *Mapping) { d.MappingsAdded = append(d.MappingsAdded, MappingRef{q.PID, *n}) },
		func(m, n *Mapping) error {
			var f fieldDiffer
			f.num("size", m.Size, n.Size)
			f.cmp("permissions", m.Permissions, n.Permissions)
			f.cmp("flags", m.Flags, n.Flags)
			f.cmp("path", m.Path, n.Path)
			f.num("file_offset", m.FileOffset, n.FileOffset)
			f.num("page_size", m.PageSize, n.PageSize)
			f.cmp("physical_addr", optString(m.PhysicalAddr), optString(n.PhysicalAddr))
			if (m.BlobOffset == nil) != (n.BlobOffset == nil) {
				f.cmp("stored", strconv.FormatBool(m.BlobOffset != nil), strconv.FormatBool(n.BlobOffset != nil))
			}
			c := MappingChange{PID: q.PID, VirtualAddr: n.VirtualAddr, Path: n.Path, Changes: f.out}
			if m.BlobOffset != nil && n.BlobOffset != nil && a.snap.BlobFilePath == "" && b.snap.BlobFilePath == "" {
				pages, bytes, err := comparePages(a, b, *m, *n)
				if err != nil {
					return err
				}
				c.PagesChanged, c.BytesChanged = pages, bytes
				d.PagesChanged += pages
				d.BytesChanged += bytes
			}
			if len(c.Changes) > 0 || c.PagesChanged > 0 {
				d.MappingsChanged = append(d.MappingsChanged, c)
			}
			return nil
		})
}

// comparePages counts the pages of the mappings' content that differ;
// pages beyond the shorter mapping count as changed.
func comparePages(a, b *View, m, n Mapping) (pages, nbytes int64, err error) {
	page := max(n.PageSize, 1)
	common := min(m.Size, n.Size)
	const chunk = 1 << 20
	bufA, bufB := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); off < common; off += chunk {
		l := min(chunk, common-off)
		if err := a.ReadBlob(bufA[:l], *m.BlobOffset+off); err != nil {
			return 0, 0, err
		}
		if err := b.ReadBlob(bufB[:l], *n.BlobOffset+off); err != nil {
			return 0, 0, err
		}
		for p := int64(0); p < l; p += page {
			e := min(p+page, l)
			if !bytes.Equal(bufA[p:e], bufB[p:e]) {
				pages++
				nbytes += e - p
			}
		}
	}
	if extra := max(m.Size, n.Size) - common; extra > 0 {
		pages += (extra + page - 1) / page
		nbytes += extra
	}
	return pages, nbytes, nil
}

func compareFiles(p, q *Process, d *Diff) {
	matchByKey(p.Files, q.Files, func(f *File) int64 { return f.FD },
		func(f *File) { d.FilesRemoved = append(d.FilesRemoved, FileRef{p.PID, *f}) },
		func(g *File) { d.FilesAdded = append(d.FilesAdded, FileRef{q.PID, *g}) },
		func(f, g *File) error {
			var c fieldDiffer
			c.cmp("path", f.Path, g.Path)
			c.num("position", f.Position, g.Position)
			c.cmp("flags", f.Flags, g.Flags)
			if len(c.out) > 0 {
				d.FilesChanged = append(d.FilesChanged, FileChange{q.PID, g.FD, c.out})
			}
			return nil
		})
}

func compareSignals(p, q *Process, d *Diff) {
	matchByKey(p.Signals, q.Signals, func(g *Signal) int64 { return g.Number },
		func(g *Signal) { d.SignalsRemoved = append(d.SignalsRemoved, SignalRef{p.PID, *g}) },
		func(h *Signal) { d.SignalsAdded = append(d.SignalsAdded, SignalRef{q.PID, *h}) },
		func(g, h *Signal) error {
			var c fieldDiffer
			c.cmp("disposition", g.Disposition, h.Disposition)
			c.cmp("handler_address", optString(g.HandlerAddress), optString(h.HandlerAddress))
			c.cmp("flags", g.Flags, h.Flags)
			if len(c.out) > 0 {
				d.SignalsChanged = append(d.SignalsChanged, SignalChange{q.PID, h.Number, c.out})
			}
			return nil
		})
}

// matchByKey pairs the elements of a and b that have the same key. It
// calls removed for each element of a whose key is not in b, in a's
// order, then goes through b in order, calling added for an element whose
// key is not in a and both for one whose key is; it stops at both's first
// error.
func matchByKey[T any, K comparable](a, b []T, key func(*T) K, removed, added func(*T), both func(old, new *T) error) error {
	inA := make(map[K]*T, len(a))
	for i := range a {
		inA[key(&a[i])] = &a[i]
	}
	inB := make(map[K]bool, len(b))
	for i := range b {
		inB[key(&b[i])] = true
	}
	for i := range a {
		if !inB[key(&a[i])] {
			removed(&a[i])
		}
	}
	for i := range b {
		old, ok := inA[key(&b[i])]
		if !ok {
			added(&b[i])
			continue
		}
		if err := both(old, &b[i]); err != nil {
			return err
		}
	}
	return nil
}
