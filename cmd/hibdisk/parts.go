package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"text/tabwriter"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/inspect"
)

func init() {
	register(command{name: "parts", summary: "list an image's partitions and the filesystems on them", run: runParts})
}

func runParts(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "parts", "[--json] IMAGE")
	asJSON := fs.Bool("json", false, "print JSON (see README)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	d, err := diffdisk.OpenImage(pos[0])
	if err != nil {
		return err
	}
	defer d.Close()
	im, err := inspect.Open(d, pos[0])
	if err != nil {
		return err
	}
	parts, err := im.Partitions()
	if err != nil {
		return err
	}
	table := im.TableType()
	if *asJSON {
		out := struct {
			Table      string              `json:"table"`
			Size       int64               `json:"size"`
			Partitions []inspect.Partition `json:"partitions"`
		}{table, d.Size(), parts}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if table == "" {
		table = "none"
	}
	fmt.Fprintf(e.stdout, "table: %s\n", table)
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tSTART\tSIZE\tTYPE\tNAME\tFS\tLABEL")
	for _, p := range parts {
		fs := string(p.FS)
		if fs == "" {
			fs = "-"
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%s\n", p.Index, p.Start, p.Size, p.Type, dash(p.Name), fs, dash(p.Label))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// partSuffix is the ":PART" of IMAGE[:PART].
var partSuffix = regexp.MustCompile(`^(.*):([0-9]+)$`)

// splitImagePart splits IMAGE[:PART]; part is -1 when none is named. A
// file whose own name ends in ":N" is taken whole.
func splitImagePart(spec string) (image string, part int) {
	m := partSuffix.FindStringSubmatch(spec)
	if m == nil {
		return spec, -1
	}
	if _, err := os.Stat(spec); err == nil {
		return spec, -1
	}
	n, err := strconv.Atoi(m[2])
	if err != nil {
		return spec, -1
	}
	return m[1], n
}

// openFS opens the filesystem IMAGE[:PART] names, for ls, cat and get.
// Warnings about what is shown (an ext4 journal needing recovery) go to
// stderr. close closes the image.
func openFS(e *env, cmd, spec string) (fsys *inspect.FS, close func(), err error) {
	image, part := splitImagePart(spec)
	d, err := diffdisk.OpenImage(image)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	im, err := inspect.Open(d, image)
	if err != nil {
		return nil, nil, err
	}
	if part < 0 {
		if part, err = im.DefaultPartition(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", image, err)
		}
	}
	fsys, err = im.FS(part)
	if err != nil {
		if errors.Is(err, inspect.ErrNoPartition) || errors.Is(err, inspect.ErrNoFilesystem) || errors.Is(err, inspect.ErrCorrupt) {
			return nil, nil, fmt.Errorf("%s: %w", image, err)
		}
		return nil, nil, err
	}
	for _, w := range fsys.Warnings() {
		fmt.Fprintf(e.stderr, "hibdisk %s: warning: %s\n", cmd, w)
	}
	return fsys, func() { d.Close() }, nil
}
