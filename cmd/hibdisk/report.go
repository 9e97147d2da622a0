package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/inspect"
	"github.com/hibdisk/hibdisk/report"
)

func init() {
	register(command{name: "report", summary: "one self-contained HTML page comparing two images: chains, disk map, files, snapshots, datastore", run: runReport})
}

// runReport writes `hibdisk report A B`: what `info`, `map`, `diff` and
// `hib diff` say about A and B, as one HTML page (package report). It
// exits 0 whether or not the images differ: the page says which.
func runReport(_ context.Context, e *env, args []string) error {
	fl := newFlags(e, "report", "[-o FILE] A B")
	out := fl.String("o", "", "write the page to `FILE` instead of standard output")
	pos, err := parseArgs(fl, args, 2, 2)
	if err != nil {
		return err
	}
	p, err := buildReport(pos[0], pos[1])
	if err != nil {
		return err
	}
	if *out == "" {
		return report.Write(e.stdout, p)
	}
	return writeFileAtomic(*out, func(w io.Writer) error { return report.Write(w, p) })
}

// writeFileAtomic writes path through a temporary file in its directory,
// renamed over it once complete: a failed write leaves no partial page.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func buildReport(pathA, pathB string) (*report.Page, error) {
	p := &report.Page{Generated: time.Now()}
	var err error
	if p.A, err = reportSide(pathA); err != nil {
		return nil, err
	}
	if p.B, err = reportSide(pathB); err != nil {
		return nil, err
	}
	a, b, err := openTwo(pathA, pathB)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	defer b.Close()
	rep, err := inspect.Diff(a, b)
	if err != nil {
		return nil, err
	}
	p.FastPath = rep.FastPath
	p.Disk = rangeDiff(rep.Disk)
	if rep.Hibernate != nil {
		h := rangeDiff(*rep.Hibernate)
		p.Hibernate = &h
	}
	for _, f := range rep.Filesystems {
		p.Filesystems = append(p.Filesystems, reportFS(f))
	}
	p.Skipped = rep.Skipped
	ds, err := diffDatastores(a, b)
	if err != nil {
		return nil, err
	}
	if ds != nil {
		changes := []report.DatastoreChange{}
		for _, d := range *ds {
			changes = append(changes, report.DatastoreChange{Key: d.Key, Type: fmt.Sprint(d.Type), Change: d.Change})
		}
		p.Datastore = &changes
	}
	if err := reportSnapshots(p, pathA, pathB); err != nil {
		return nil, err
	}
	return p, nil
}

// reportSide describes one image's chain and map.
func reportSide(path string) (report.Side, error) {
	d, err := diffdisk.OpenImage(path)
	if err != nil {
		return report.Side{}, err
	}
	defer d.Close()
	s := report.Side{Path: path, Size: d.Size()}
	// Chain, not Layers: the report shows no row counts, and counting
	// would read every layer whole (fetch it, for a base in a store).
	layers, err := d.Chain()
	if err != nil {
		return report.Side{}, err
	}
	for _, l := range layers {
		size, err := fileSize(l.Path)
		if err != nil {
			size = -1 // an NBD export, a layer in a store
		}
		s.Layers = append(s.Layers, report.Layer{Path: l.Path, Format: l.Format, Size: l.Size, Label: l.Label, ReadOnly: l.ReadOnly, DiskBytes: size})
	}
	runs, err := diffdisk.Map(d)
	if err != nil {
		return report.Side{}, err
	}
	for _, r := range runs {
		kind := "none"
		switch r.Kind {
		case disklayer.Data:
			kind = "data"
		case disklayer.Zero:
			kind = "zero"
		}
		s.Runs = append(s.Runs, report.Run{Start: r.Start, Length: r.Length, Depth: r.Depth, Kind: kind})
	}
	return s, nil
}

func rangeDiff(r inspect.RangeDiff) report.RangeDiff {
	out := report.RangeDiff{SizeA: r.SizeA, SizeB: r.SizeB, ChangedBytes: r.ChangedBytes}
	for _, c := range r.Changed {
		out.Changed = append(out.Changed, report.Range{Off: c.Off, Len: c.Len})
	}
	return out
}

func reportFS(f inspect.FSDiff) report.Filesystem {
	out := report.Filesystem{Name: fmt.Sprintf("partition %d (%s)", f.Partition, f.Kind), Warnings: f.Warnings, Unchanged: f.Unchanged}
	for _, m := range f.Added {
		out.Files = append(out.Files, report.FileChange{Change: "added", Path: m.Path, Type: m.Type, SizeA: -1, SizeB: m.Size})
	}
	for _, m := range f.Removed {
		out.Files = append(out.Files, report.FileChange{Change: "removed", Path: m.Path, Type: m.Type, SizeA: m.Size, SizeB: -1})
	}
	for _, c := range f.Changed {
		out.Files = append(out.Files, report.FileChange{Change: "changed", Path: c.Path, Type: c.B.Type, SizeA: c.A.Size, SizeB: c.B.Size, Fields: strings.Join(c.Fields, ", ")})
	}
	return out
}

// reportSnapshots fills the snapshot summaries of both sides and their
// comparison. A side without a snapshot (or a raw image) gets a note.
func reportSnapshots(p *report.Page, pathA, pathB string) error {
	sides := []struct {
		name, path string
		side       *report.Side
	}{{"A", pathA, &p.A}, {"B", pathB, &p.B}}
	for _, s := range sides {
		err := withLatest(s.path, func(v *hibfile.View) error {
			sum, err := summarize(v)
			if err != nil {
				return err
			}
			s.side.Snapshot = &report.Snapshot{Layer: sum.Layer, Source: sum.Source, Kernel: sum.KernelVersion, Arch: sum.Arch,
				Timestamp: sum.Timestamp, MemoryKB: sum.TotalMemoryKB, Processes: sum.TotalProcesses, Mappings: sum.Mappings, StoredBytes: sum.StoredBytes}
			return nil
		})
		switch {
		case errors.Is(err, hibfile.ErrNoSnapshot):
			p.SnapshotNotes = append(p.SnapshotNotes, s.name+" holds no hibernate snapshot.")
		case errors.Is(err, disklayer.ErrNotLayer):
			p.SnapshotNotes = append(p.SnapshotNotes, s.name+" is a raw image: it holds no hibernate snapshot.")
		case err != nil:
			return err
		}
	}
	if p.A.Snapshot != nil && p.B.Snapshot != nil {
		err := withLatest(pathA, func(a *hibfile.View) error {
			return withLatest(pathB, func(b *hibfile.View) error {
				d, err := hibfile.Compare(a, b)
				if err != nil {
					return err
				}
				var text bytes.Buffer
				printHibDiff(&text, d)
				lines := strings.Split(strings.TrimSpace(text.String()), "\n")
				p.Snapshot = &report.SnapshotDiff{
					ProcessesAdded: len(d.ProcessesAdded), ProcessesRemoved: len(d.ProcessesRemoved), ProcessesChanged: len(d.ProcessesChanged),
					MappingsAdded: len(d.MappingsAdded), MappingsRemoved: len(d.MappingsRemoved), MappingsChanged: len(d.MappingsChanged),
					FilesAdded: len(d.FilesAdded), FilesRemoved: len(d.FilesRemoved), FilesChanged: len(d.FilesChanged),
					PagesChanged: d.PagesChanged, BytesChanged: d.BytesChanged,
					Lines: lines[:len(lines)-1], // the last is the totals line the page shows itself
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
	}
	img, err := diffImages(pathA, pathB)
	if err != nil {
		return err
	}
	if img != nil {
		var text bytes.Buffer
		printOSImageDiff(&text, img)
		for _, l := range strings.Split(strings.TrimSpace(text.String()), "\n") {
			p.SnapshotNotes = append(p.SnapshotNotes, "OS hibernation image: "+l)
		}
	}
	return nil
}
