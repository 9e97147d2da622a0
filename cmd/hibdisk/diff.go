package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/inspect"
)

func init() {
	register(command{name: "diff", summary: "what changed between two images: sectors, hibernate blocks, files (exit 0 same, 1 different, 2 error)", run: runDiff})
}

// textRanges is how many changed ranges the text output lists before
// pointing to --json.
const textRanges = 20

// runDiff prints inspect.Diff's report. Hibernate metadata (processes,
// memory maps, ...) is diffed by `hibdisk hib diff` (package hibfile);
// to fold it in here, add a "metadata" member to the report printed
// below, after the filesystems, and count it in hasChanges.
func runDiff(_ context.Context, e *env, args []string) error {
	fl := newFlags(e, "diff", "[--json] A B")
	asJSON := fl.Bool("json", false, "print the report as JSON (see README)")
	pos, err := parseArgs(fl, args, 2, 2)
	if err != nil {
		return err
	}
	a, b, err := openTwo(pos[0], pos[1])
	if err != nil {
		return err
	}
	defer a.Close()
	defer b.Close()
	rep, err := inspect.Diff(a, b)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	ds, err := diffDatastores(a, b)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	img, err := diffImages(pos[0], pos[1])
	if err != nil {
		return exitError{code: 2, err: err}
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(diffReport{Report: rep, Datastore: ds, OSImage: img}); err != nil {
			return exitError{code: 2, err: err}
		}
	} else {
		printDiff(e.stdout, rep)
		printDatastoreDiff(e.stdout, ds)
		if img != nil {
			printOSImageDiff(e.stdout, img)
		}
	}
	if hasChanges(rep) || (ds != nil && len(*ds) > 0) {
		return exitError{code: 1}
	}
	return nil
}

func hasChanges(rep *inspect.Report) bool {
	if len(rep.Disk.Changed) > 0 || rep.Disk.SizeA != rep.Disk.SizeB {
		return true
	}
	if h := rep.Hibernate; h != nil && (len(h.Changed) > 0 || h.SizeA != h.SizeB) {
		return true
	}
	for _, f := range rep.Filesystems {
		if len(f.Added)+len(f.Removed)+len(f.Changed) > 0 {
			return true
		}
	}
	return len(rep.Skipped) > 0
}

func printDiff(w io.Writer, rep *inspect.Report) {
	how := "every allocated range compared"
	if rep.FastPath {
		how = "fast path: one image is a diff chain over the other, only its own sectors compared"
	}
	printRanges(w, "disk", &rep.Disk, how)
	if rep.Hibernate == nil {
		fmt.Fprintln(w, "hibernate: not compared (a raw image has no hibernate file)")
	} else {
		printRanges(w, "hibernate", rep.Hibernate, "")
	}
	for _, f := range rep.Filesystems {
		fmt.Fprintf(w, "partition %d (%s):", f.Partition, f.Kind)
		if f.Unchanged {
			fmt.Fprintln(w, " unchanged (no changed sector in it)")
			continue
		}
		if len(f.Added)+len(f.Removed)+len(f.Changed) == 0 {
			fmt.Fprint(w, " no file changes")
		}
		fmt.Fprintln(w)
		for _, warning := range f.Warnings {
			fmt.Fprintf(w, "  warning: %s\n", warning)
		}
		for _, m := range f.Added {
			fmt.Fprintf(w, "  + %s\n", m.Path)
		}
		for _, m := range f.Removed {
			fmt.Fprintf(w, "  - %s\n", m.Path)
		}
		for _, c := range f.Changed {
			fmt.Fprintf(w, "  ~ %s: %s\n", c.Path, strings.Join(c.Fields, ", "))
		}
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(w, "not compared: %s\n", s)
	}
}

func printRanges(w io.Writer, what string, rd *inspect.RangeDiff, how string) {
	if how != "" {
		how = " (" + how + ")"
	}
	if rd.SizeA != rd.SizeB {
		fmt.Fprintf(w, "%s: size %d -> %d\n", what, rd.SizeA, rd.SizeB)
	}
	if len(rd.Changed) == 0 {
		fmt.Fprintf(w, "%s: identical%s\n", what, how)
		return
	}
	fmt.Fprintf(w, "%s: %d bytes differ in %d ranges%s\n", what, rd.ChangedBytes, len(rd.Changed), how)
	for i, r := range rd.Changed {
		if i == textRanges {
			fmt.Fprintf(w, "  ... %d more (see --json)\n", len(rd.Changed)-textRanges)
			break
		}
		fmt.Fprintf(w, "  offset %d length %d\n", r.Off, r.Len)
	}
}

// diffImages compares the OS hibernation images of A and B, on chains of
// their own (inspect.Diff took the hibernate file views of the others);
// nil when either has none.
func diffImages(pathA, pathB string) (*hibfile.OSImageDiff, error) {
	a, b, err := openTwo(pathA, pathB)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	defer b.Close()
	img, err := hibfile.CompareOSImages(a, b)
	if errors.Is(err, hibfile.ErrNoOSImage) {
		return nil, nil
	}
	return img, err
}
