// Package report renders what `hibdisk report A B` found as one
// self-contained HTML page: no network, no external assets, so a CI
// system can keep it as a job artifact and anyone can open it offline.
// It holds only presentation: cmd/hibdisk gathers the facts (chains,
// maps, diffs) and fills a Page.
package report

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strings"
	"time"
)

// Page is everything the report shows.
type Page struct {
	Generated time.Time
	A, B      Side
	// Disk is the comparison of the guest-visible disks.
	Disk RangeDiff
	// FastPath: one image is a diff chain over the other, and only its
	// own sectors were compared.
	FastPath bool
	// Hibernate compares the hibernate files; nil when either side has
	// none (a raw image).
	Hibernate   *RangeDiff
	Filesystems []Filesystem
	// Skipped lists what could not be compared, and why.
	Skipped []string
	// Datastore lists the entries that differ; nil when not compared.
	Datastore *[]DatastoreChange
	// Snapshot compares the newest snapshots; nil when either side has
	// none. Notes says why it is missing, when it is.
	Snapshot      *SnapshotDiff
	SnapshotNotes []string
}

// Side is one image: its chain and what each layer supplies.
type Side struct {
	Path   string
	Size   int64
	Layers []Layer // top first
	Runs   []Run   // the map of the whole disk, in order
	// Snapshot is the newest snapshot visible in the chain, or nil.
	Snapshot *Snapshot
}

// Layer is one file of a chain.
type Layer struct {
	Path     string
	Format   string
	Size     int64
	Label    string
	ReadOnly bool
	// DiskBytes is the file's allocated size, -1 when unknown.
	DiskBytes int64
}

// Run is a stretch of the disk supplied by one layer (Depth, 0 = top),
// or by none (Kind "none").
type Run struct {
	Start, Length int64
	Depth         int
	Kind          string // "data", "zero" or "none"
}

// Range is a byte range.
type Range struct{ Off, Len int64 }

// RangeDiff is how two byte spaces differ.
type RangeDiff struct {
	SizeA, SizeB int64
	Changed      []Range
	ChangedBytes int64
}

// Filesystem is the file changes of one partition.
type Filesystem struct {
	Name      string // "partition 1 (ext4)"
	Warnings  []string
	Unchanged bool // no changed sector in it: not walked
	Files     []FileChange
}

// FileChange is one file added, removed or changed.
type FileChange struct {
	Change string // "added", "removed", "changed"
	Path   string
	Type   string
	SizeA  int64 // -1 when absent on that side
	SizeB  int64
	Fields string // what changed, for "changed"
}

// DatastoreChange is one datastore entry that differs.
type DatastoreChange struct {
	Key, Type, Change string // Change: "added", "removed", "changed"
}

// Snapshot summarises a hibernate snapshot.
type Snapshot struct {
	Layer       string
	Source      string
	Kernel      string
	Arch        string
	Timestamp   time.Time
	MemoryKB    int64
	Processes   int64
	Mappings    int
	StoredBytes int64
}

// SnapshotDiff is what changed between two snapshots.
type SnapshotDiff struct {
	ProcessesAdded, ProcessesRemoved, ProcessesChanged int
	MappingsAdded, MappingsRemoved, MappingsChanged    int
	FilesAdded, FilesRemoved, FilesChanged             int
	PagesChanged, BytesChanged                         int64
	// Lines are the changes, one per line, as `hib diff` prints them.
	Lines []string
}

//go:embed page.html.tmpl
var pageTemplate string

var funcs = template.FuncMap{
	"bytes": HumanBytes,
	"strip": func(s Side, changed []Range) template.HTML { return template.HTML(stripSVG(s, changed, false)) },
	"color": func(depth, layers int) template.CSS { return template.CSS(layerColor(depth, layers)) },
	"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"fileCounts": func(fs Filesystem) string {
		var a, r, c int
		for _, f := range fs.Files {
			switch f.Change {
			case "added":
				a++
			case "removed":
				r++
			default:
				c++
			}
		}
		return fmt.Sprintf("%d added, %d removed, %d changed", a, r, c)
	},
	"size": func(n int64) string {
		if n < 0 {
			return "—"
		}
		return HumanBytes(n)
	},
	"sizeKey": func(n int64) int64 { return n },
	"kib":     func(n int64) int64 { return n * 1024 },
	"pair":    func(name string, s Side) chainView { return chainView{name, s} },
	"deref": func(p *[]DatastoreChange) []DatastoreChange {
		if p == nil {
			return nil
		}
		return *p
	},
}

// chainView is the "chain" template's argument.
type chainView struct {
	Name string
	Side Side
}

var page = template.Must(template.New("page").Funcs(funcs).Parse(pageTemplate))

// Write renders p as one HTML document.
func Write(w io.Writer, p *Page) error {
	for _, fs := range p.Filesystems {
		sort.SliceStable(fs.Files, func(i, j int) bool { return fs.Files[i].Path < fs.Files[j].Path })
	}
	return page.Execute(w, p)
}

// WriteSVG writes the strip of one side as a standalone SVG document
// (`hibdisk map --svg`).
func WriteSVG(w io.Writer, s Side) error {
	_, err := io.WriteString(w, stripSVG(s, nil, true))
	return err
}

// HumanBytes formats n in binary units, as qemu-img does ("1.5 MiB").
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	s := fmt.Sprintf("%.1f", v)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string("KMGTPE"[i]) + "iB"
}
