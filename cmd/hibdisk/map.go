package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/report"
)

func init() {
	register(command{name: "map", summary: "show which layer supplies each extent, and data vs zero", run: runMap})
}

// mapJSON is one element of `hibdisk map --json`, in the shape of
// `qemu-img map --output=json`: present says some layer stores the run,
// zero that it reads as zeros, data that it holds bytes. depth is the
// supplying layer (0 = top); for a run no layer stores it is the number of
// layers, as in qemu-img. The format is stable: fields are only added.
type mapJSON struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	File    string `json:"file,omitempty"`
}

func runMap(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "map", "[--json] [--svg FILE] IMAGE")
	asJSON := fs.Bool("json", false, "print JSON (qemu-img map --output=json shape)")
	svg := fs.String("svg", "", "also draw the map as a strip, coloured by layer, into the SVG `FILE`")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *svg != "" {
		side, err := reportSide(pos[0])
		if err != nil {
			return err
		}
		if err := writeFileAtomic(*svg, func(w io.Writer) error { return report.WriteSVG(w, side) }); err != nil {
			return err
		}
	}
	d, err := diffdisk.OpenImage(pos[0])
	if err != nil {
		return err
	}
	defer d.Close()
	runs, err := diffdisk.Map(d)
	if err != nil {
		return err
	}
	out := make([]mapJSON, len(runs))
	for i, r := range runs {
		m := mapJSON{Start: r.Start, Length: r.Length, Depth: r.Depth, File: r.Path}
		switch r.Kind {
		case disklayer.Data:
			m.Present, m.Data = true, true
		case disklayer.Zero:
			m.Present, m.Zero = true, true
		default:
			m.Zero, m.Depth = true, d.Depth()
		}
		out[i] = m
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(e.stdout, "%-19s %-19s %-6s %s\n", "Offset", "Length", "Kind", "Layer")
	for _, m := range out {
		kind, layer := "-", "(unallocated)"
		switch {
		case m.Data:
			kind = "data"
		case m.Zero && m.Present:
			kind = "zero"
		}
		if m.Present {
			layer = fmt.Sprintf("%d %s", m.Depth, m.File)
		}
		fmt.Fprintf(e.stdout, "%#-19x %#-19x %-6s %s\n", m.Start, m.Length, kind, layer)
	}
	return nil
}
