package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/hibfile/swsusp"
)

func init() {
	registerHib(command{name: "diff", summary: "what changed between the newest snapshots of A and B", run: runHibDiff})
}

// runHibDiff exits as diff(1) does: 0 when the snapshots are the same, 1
// when they differ, 2 on trouble.
func runHibDiff(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib diff", "[--json] A B")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	same, err := hibDiff(e, pos[0], pos[1], *asJSON)
	switch {
	case err != nil:
		return exitError{code: 2, err: err}
	case !same:
		return exitError{code: 1}
	}
	return nil
}

// hibDiff prints what changed between the newest snapshots (or OS
// hibernation images) of A and B, and reports whether there was nothing.
func hibDiff(e *env, pathA, pathB string, asJSON bool) (same bool, err error) {
	if d, err := diffOSImages(pathA, pathB); d != nil || err != nil {
		if err != nil {
			return false, err
		}
		if asJSON {
			return d.Empty(), writeJSON(e.stdout, d)
		}
		printOSImageDiff(e.stdout, d)
		return d.Empty(), nil
	}
	err = withLatest(pathA, func(a *hibfile.View) error {
		return withLatest(pathB, func(b *hibfile.View) error {
			d, err := hibfile.Compare(a, b)
			if err != nil {
				return err
			}
			same = d.Empty() && d.PagesChanged == 0
			if asJSON {
				return writeJSON(e.stdout, d)
			}
			printHibDiff(e.stdout, d)
			return nil
		})
	})
	return same, err
}

func changes(cs []hibfile.FieldChange) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fmt.Sprintf("%s %s -> %s", c.Field, c.Old, c.New)
	}
	return strings.Join(parts, ", ")
}

func printHibDiff(w io.Writer, d *hibfile.Diff) {
	for _, p := range d.ProcessesRemoved {
		fmt.Fprintf(w, "- process %d %s\n", p.PID, p.Name)
	}
	for _, p := range d.ProcessesAdded {
		fmt.Fprintf(w, "+ process %d %s\n", p.PID, p.Name)
	}
	for _, p := range d.ProcessesChanged {
		fmt.Fprintf(w, "~ process %d %s: %s\n", p.PID, p.Name, changes(p.Changes))
	}
	for _, m := range d.MappingsRemoved {
		fmt.Fprintf(w, "- mapping %d %#x %s %s\n", m.PID, m.Mapping.VirtualAddr, m.Mapping.Permissions, m.Mapping.Path)
	}
	for _, m := range d.MappingsAdded {
		fmt.Fprintf(w, "+ mapping %d %#x %s %s\n", m.PID, m.Mapping.VirtualAddr, m.Mapping.Permissions, m.Mapping.Path)
	}
	for _, m := range d.MappingsChanged {
		var parts []string
		if len(m.Changes) > 0 {
			parts = append(parts, changes(m.Changes))
		}
		if m.PagesChanged > 0 {
			parts = append(parts, fmt.Sprintf("%d pages changed (%d bytes)", m.PagesChanged, m.BytesChanged))
		}
		fmt.Fprintf(w, "~ mapping %d %#x %s: %s\n", m.PID, m.VirtualAddr, m.Path, strings.Join(parts, ", "))
	}
	for _, f := range d.FilesRemoved {
		fmt.Fprintf(w, "- file %d fd %d %s\n", f.PID, f.File.FD, f.File.Path)
	}
	for _, f := range d.FilesAdded {
		fmt.Fprintf(w, "+ file %d fd %d %s\n", f.PID, f.File.FD, f.File.Path)
	}
	for _, f := range d.FilesChanged {
		fmt.Fprintf(w, "~ file %d fd %d: %s\n", f.PID, f.FD, changes(f.Changes))
	}
	for _, g := range d.SignalsRemoved {
		fmt.Fprintf(w, "- signal %d %s\n", g.PID, signalName(g.Signal.Number))
	}
	for _, g := range d.SignalsAdded {
		fmt.Fprintf(w, "+ signal %d %s %s\n", g.PID, signalName(g.Signal.Number), g.Signal.Disposition)
	}
	for _, g := range d.SignalsChanged {
		fmt.Fprintf(w, "~ signal %d %s: %s\n", g.PID, signalName(g.Number), changes(g.Changes))
	}
	fmt.Fprintf(w, "processes: +%d -%d ~%d; mappings: +%d -%d ~%d; pages changed: %d (%d bytes); files: +%d -%d ~%d; signals: +%d -%d ~%d\n",
		len(d.ProcessesAdded), len(d.ProcessesRemoved), len(d.ProcessesChanged),
		len(d.MappingsAdded), len(d.MappingsRemoved), len(d.MappingsChanged), d.PagesChanged, d.BytesChanged,
		len(d.FilesAdded), len(d.FilesRemoved), len(d.FilesChanged),
		len(d.SignalsAdded), len(d.SignalsRemoved), len(d.SignalsChanged))
}

// diffOSImages compares the OS hibernation images of A and B when neither
// holds a hibdisk snapshot and both hold an image; (nil, nil) otherwise,
// so hib diff goes on with the snapshots.
func diffOSImages(pathA, pathB string) (*hibfile.OSImageDiff, error) {
	var d *hibfile.OSImageDiff
	err := withSnapshotOrImage(pathA, func(*hibfile.View) error { return nil }, func(ca *hibfile.Chain, _ *hibfile.OSImage) error {
		return withSnapshotOrImage(pathB, func(*hibfile.View) error {
			return fmt.Errorf("%s holds a %s image, %s a hibdisk snapshot: not comparable", pathA, swsusp.Source, pathB)
		}, func(cb *hibfile.Chain, _ *hibfile.OSImage) (err error) {
			d, err = ca.CompareOSImage(cb)
			return err
		})
	})
	if errors.Is(err, hibfile.ErrNoSnapshot) {
		return nil, nil // the snapshot path reports it
	}
	return d, err
}
