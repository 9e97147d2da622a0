package hibfile

import (
	"fmt"
	"slices"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Statuses of a snapshot.
const (
	StatusComplete = "complete"
	// StatusPartial: some stored content could not be read and was saved
	// as zeros (a capture raced a process, or memory was unreadable).
	StatusPartial = "partial"
)

// Signal dispositions.
const (
	DispositionDefault = "default"
	DispositionIgnore  = "ignore"
	DispositionHandler = "handler"
)

// Snapshot is one machine snapshot: the hibernate_snapshot row and, when
// loaded, its processes with their rows. JSON field names are the column
// names; the JSON format is documented in json.go.
type Snapshot struct {
	// ID and LayerUUID identify where the snapshot is stored, not what it
	// holds: they are not part of the JSON format.
	ID        int64  `json:"-"`
	LayerUUID string `json:"-"`

	Timestamp     time.Time `json:"timestamp"`
	KernelVersion string    `json:"kernel_version"`
	TotalMemoryKB int64     `json:"total_memory_kb"`
	// BlobFilePath is empty when blob offsets are into the chain's
	// hibernate file (always, for snapshots hibfile saves); snapshots
	// migrated from the seed may name an external blob file.
	BlobFilePath string `json:"blob_file_path,omitempty"`
	Source       string `json:"source"`
	Status       string `json:"status"`
	Arch         string `json:"arch"`
	// BlobSize is the end of the highest blob range; Save computes it.
	BlobSize int64 `json:"blob_size"`
	// TotalProcesses is the stored count; Save sets it to len(Processes).
	TotalProcesses int64 `json:"total_processes"`

	Processes []Process `json:"processes"`
}

// Process is a hibernate_processes row and, when loaded, its rows.
type Process struct {
	PID       int64  `json:"pid"`
	ParentPID int64  `json:"parent_pid"`
	Name      string `json:"name"`
	State     string `json:"state"`
	// RegistersOffset is nil when the registers are unknown.
	RegistersOffset *int64 `json:"registers_offset"`
	RegistersSize   int64  `json:"registers_size"`
	MemoryStart     int64  `json:"memory_start"`
	MemorySize      int64  `json:"memory_size"`
	CwdPath         string `json:"cwd_path"`

	Mappings []Mapping `json:"mappings"`
	Files    []File    `json:"files"`
	Signals  []Signal  `json:"signals"`
}

// Mapping is a hibernate_memory_map row.
type Mapping struct {
	VirtualAddr  int64  `json:"virtual_addr"`
	Size         int64  `json:"size"`
	PhysicalAddr *int64 `json:"physical_addr"`
	PageSize     int64  `json:"page_size"`
	Permissions  string `json:"permissions"`
	Flags        string `json:"flags"`
	// BlobOffset is nil when the mapping's content is not stored (shared
	// or read-only file mappings, which a restorer maps from the file).
	BlobOffset *int64 `json:"blob_offset"`
	Path       string `json:"path"`
	FileOffset int64  `json:"file_offset"`
}

// End is the address just past the mapping.
func (m Mapping) End() int64 { return m.VirtualAddr + m.Size }

// File is a hibernate_files row: an open file descriptor.
type File struct {
	FD       int64  `json:"fd"`
	Path     string `json:"path"`
	Position int64  `json:"position"`
	Flags    string `json:"flags"`
}

// Signal is a hibernate_signals row.
type Signal struct {
	Number int64 `json:"signal_number"`
	// HandlerAddress is nil when unknown: Linux does not show handler
	// addresses in /proc, so captured handlers have none.
	HandlerAddress *int64 `json:"handler_address"`
	Disposition    string `json:"disposition"`
	Flags          string `json:"flags"`
}

// blobRange is a stored range and what it belongs to, for validation and
// error messages.
type blobRange struct {
	disklayer.Range
	what string
}

// ranges lists the snapshot's stored ranges, sorted by offset.
func (s *Snapshot) ranges() []blobRange {
	var out []blobRange
	for _, p := range s.Processes {
		if p.RegistersOffset != nil && p.RegistersSize > 0 {
			out = append(out, blobRange{disklayer.Range{Off: *p.RegistersOffset, Len: p.RegistersSize}, fmt.Sprintf("registers of pid %d", p.PID)})
		}
		for _, m := range p.Mappings {
			if m.BlobOffset != nil {
				out = append(out, blobRange{disklayer.Range{Off: *m.BlobOffset, Len: m.Size}, fmt.Sprintf("mapping %#x of pid %d", m.VirtualAddr, p.PID)})
			}
		}
	}
	slices.SortFunc(out, func(a, b blobRange) int { return cmpInt(a.Off, b.Off) })
	return out
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// validate checks what the schema cannot: unique keys, sizes, ranges
// inside the hibernate file and not overlapping. Errors wrap
// disklayer.ErrInvalid.
func (s *Snapshot) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), disklayer.ErrInvalid)
	}
	if s.Status != StatusComplete && s.Status != StatusPartial {
		return bad("status %q is neither %q nor %q", s.Status, StatusComplete, StatusPartial)
	}
	pids := make(map[int64]bool, len(s.Processes))
	for _, p := range s.Processes {
		if pids[p.PID] {
			return bad("pid %d appears twice", p.PID)
		}
		pids[p.PID] = true
		if p.RegistersSize < 0 || (p.RegistersOffset != nil && *p.RegistersOffset < 0) {
			return bad("pid %d: negative register range", p.PID)
		}
		addrs := make(map[int64]bool, len(p.Mappings))
		for _, m := range p.Mappings {
			if addrs[m.VirtualAddr] {
				return bad("pid %d: two mappings at %#x", p.PID, m.VirtualAddr)
			}
			addrs[m.VirtualAddr] = true
			if m.Size <= 0 || m.VirtualAddr < 0 || m.End() < m.VirtualAddr {
				return bad("pid %d: mapping at %#x has size %d", p.PID, m.VirtualAddr, m.Size)
			}
			if m.PageSize <= 0 || m.PageSize&(m.PageSize-1) != 0 {
				return bad("pid %d: mapping at %#x has page size %d, want a power of two", p.PID, m.VirtualAddr, m.PageSize)
			}
			if m.BlobOffset != nil && *m.BlobOffset < 0 {
				return bad("pid %d: mapping at %#x has a negative blob offset", p.PID, m.VirtualAddr)
			}
		}
		fds := make(map[int64]bool, len(p.Files))
		for _, f := range p.Files {
			if fds[f.FD] {
				return bad("pid %d: fd %d appears twice", p.PID, f.FD)
			}
			fds[f.FD] = true
		}
		sigs := make(map[int64]bool, len(p.Signals))
		for _, g := range p.Signals {
			if sigs[g.Number] {
				return bad("pid %d: signal %d appears twice", p.PID, g.Number)
			}
			sigs[g.Number] = true
			switch g.Disposition {
			case DispositionDefault, DispositionIgnore, DispositionHandler:
			default:
				return bad("pid %d: signal %d has disposition %q", p.PID, g.Number, g.Disposition)
			}
		}
	}
	if s.BlobFilePath != "" {
		return nil
	}
	var prev blobRange
	for i, r := range s.ranges() {
		if err := disklayer.CheckRange(r.Off, r.Len, sqlitelayer.HibernateSize); err != nil {
			return bad("%s: %v", r.what, err)
		}
		if i > 0 && r.Off < prev.End() {
			return bad("%s [%#x, %#x) overlaps %s [%#x, %#x)", r.what, r.Off, r.End(), prev.what, prev.Off, prev.End())
		}
		prev = r
	}
	return nil
}

// blobEnd is the end of the highest stored range.
func (s *Snapshot) blobEnd() int64 {
	var end int64
	for _, r := range s.ranges() {
		end = max(end, r.End())
	}
	return end
}

func ptr[T any](v T) *T { return &v }
