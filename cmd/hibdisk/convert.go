package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "convert", summary: "copy an image's whole view into a new standalone image, keeping it sparse", run: runConvert})
}

func runConvert(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "convert", "[-p] [-O hibdisk|raw|openvmm|"+qemuFormats+"] [-o OPTIONS] [-c] [--sector-size N] SRC DST")
	progress := fs.Bool("p", false, "show progress")
	format := fs.String("O", "hibdisk", "output format: hibdisk, raw, openvmm (OpenVMM's disklayer_sqlite), or one qemu-img writes: "+qemuFormats)
	sectorSize := fs.Int("sector-size", 0, "sector size of a hibdisk output (default: 4096 when the size allows) or an openvmm one (default: the source's)")
	var q qemuFlags
	q.register(fs.FlagSet)
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	if *format != "hibdisk" && *format != "raw" && *format != "openvmm" && !diffdisk.QemuImgFormat(*format) {
		return usagef("-O %q: want hibdisk, raw, openvmm, %s", *format, qemuFormats)
	}
	if err := q.check(*format); err != nil {
		return err
	}
	src, err := diffdisk.OpenImage(pos[0])
	if err != nil {
		return err
	}
	defer src.Close()
	opts := diffdisk.ConvertOptions{Format: *format, SectorSize: *sectorSize, FormatOptions: q.options, Compressed: q.compressed}
	if *progress {
		p := newProgress(e)
		opts.Progress = p.update
		defer p.done()
	}
	return diffdisk.Convert(src, pos[1], opts)
}

// progressBar prints qemu-img's "    (12.34/100%)" progress: redrawn in
// place on a terminal, one line per 10 % otherwise.
type progressBar struct {
	e    *env
	last float64
}

func newProgress(e *env) *progressBar { return &progressBar{e: e, last: -1} }

func (p *progressBar) update(done, total int64) {
	pct := 100.0
	if total > 0 {
		pct = float64(done) * 100 / float64(total)
	}
	if p.e.isTerminal {
		if pct-p.last >= 0.01 || pct == 100 {
			fmt.Fprintf(p.e.stderr, "\r    (%.2f/100%%)", pct)
			p.last = pct
		}
		return
	}
	if int(pct/10) > int(p.last/10) || p.last < 0 {
		fmt.Fprintf(p.e.stderr, "    (%.2f/100%%)\n", pct)
		p.last = pct
	}
}

func (p *progressBar) done() {
	if p.e.isTerminal {
		fmt.Fprintln(p.e.stderr)
	}
}
