package main

import (
	"context"
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
// layers, as in qemu-img. offset is where the run's bytes are in file, as
// qemu-img prints it: only for a raw file (the same as start; its holes
// are present zeros, as qemu-img says); a hibdisk
// layer keeps sectors in SQLite rows, at no fixed host offset, so the
// field is left out, as qemu-img leaves it out where it has none. The
// format is stable: fields are only added.
type mapJSON struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset,omitempty"`
	File    string `json:"file,omitempty"`
}

func runMap(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "map", "[--output=human|json] [--start-offset=N] [--max-length=N] [-f FMT] [-U] [--svg FILE] IMAGE")
	var f imgFlags
	f.addFormat(fs, "hibdisk, raw, nbd, openvmm, qcow2, vmdk, vhdx, vpc, vdi, ...")
	f.addOutput(fs, "json: qemu-img map --output=json's shape")
	f.addShare(fs)
	startFlag := fs.String("start-offset", "0", "map from this byte offset on (K/M/G suffixes)")
	lengthFlag := fs.String("max-length", "", "map at most this many bytes (default: to the end)")
	svg := fs.String("svg", "", "also draw the map as a strip, coloured by layer, into the SVG `FILE`")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	from, err := parseSize(*startFlag)
	if err != nil {
		return usagef("--start-offset: %v", err)
	}
	maxLen := int64(-1)
	if *lengthFlag != "" {
		if maxLen, err = parseSize(*lengthFlag); err != nil {
			return usagef("--max-length: %v", err)
		}
	}
	if _, err := checkFormat("-f", f.format, pos[0]); err != nil {
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
	layers, err := d.Layers()
	if err != nil {
		return err
	}
	end := d.Size()
	if maxLen >= 0 && from+maxLen < end {
		end = from + maxLen
	}
	out := []mapJSON{}
	for _, r := range runs {
		// Clip the run to [from, end), as qemu-img's --start-offset and
		// --max-length do.
		lo, hi := max(r.Start, from), min(r.Start+r.Length, end)
		if lo >= hi {
			continue
		}
		m := mapJSON{Start: lo, Length: hi - lo, Depth: r.Depth, File: r.Path}
		switch r.Kind {
		case disklayer.Data:
			m.Present, m.Data = true, true
		case disklayer.Zero:
			m.Present, m.Zero = true, true
		default:
			m.Zero, m.Depth = true, d.Depth()
			// A hole of a raw base is still its bytes (zeros, at the
			// same offset): qemu-img map says present there.
			if n := len(layers); n > 0 && layers[n-1].Format == disklayer.FormatRaw {
				m.Present, m.Depth, m.File = true, n-1, layers[n-1].Path
				r.Depth = n - 1
			}
		}
		if m.Present && r.Depth < len(layers) && layers[r.Depth].Format == disklayer.FormatRaw {
			off := lo
			m.Offset = &off
		}
		out = append(out, m)
	}
	if f.json {
		return writeJSON(e.stdout, out)
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
