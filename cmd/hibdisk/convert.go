package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "convert", summary: "copy an image's whole view into a new standalone image, keeping it sparse", run: runConvert})
}

// convertJSON is `hibdisk convert --output=json`: what was written
// where. existing is true for -n (written into an existing image).
// Stable: fields are only added.
type convertJSON struct {
	Source       string `json:"source"`
	SourceFormat string `json:"source-format"`
	Target       string `json:"target"`
	TargetFormat string `json:"target-format"`
	VirtualSize  int64  `json:"virtual-size"`
	Existing     bool   `json:"existing"`
}

func runConvert(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "convert", "[-p] [-q] [-n] [-t CACHE] [-f FMT] [-U] [-O hibdisk|raw|openvmm|"+qemuFormats+"] [-o OPTIONS] [-c] [--sector-size N] [--output=human|json] SRC DST")
	var f imgFlags
	f.addFormat(fs, "of SRC: hibdisk, raw, nbd, openvmm, qcow2, vmdk, vhdx, vpc, vdi, ...")
	f.addOutput(fs, "json: one object describing the copy")
	f.addQuiet(fs)
	f.addShare(fs)
	progress := fs.Bool("p", false, "show progress (on a terminal only)")
	existing := fs.Bool("n", false, "DST exists: write into it (a hibdisk layer or a raw image at least as large as SRC) instead of creating it")
	format := fs.String("O", "hibdisk", "output format: hibdisk, raw, openvmm (OpenVMM's disklayer_sqlite), or one qemu-img writes: "+qemuFormats)
	cache := fs.String("t", "writeback", "how DST is written: writeback (page cache, synced before convert exits), none (O_DIRECT where the filesystem allows, synced), unsafe (page cache, not synced: qemu-img convert's default; a crash soon after may leave DST incomplete); -n always syncs")
	sectorSize := fs.Int("sector-size", 0, "sector size of a hibdisk output (default: 4096 when the size allows) or an openvmm one (default: the source's)")
	var q qemuFlags
	q.register(fs.FlagSet)
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	if *format != "hibdisk" && *format != "raw" && *format != "openvmm" && !diffdisk.QemuImgFormat(*format) {
		return usagef("-O %q: want hibdisk, raw, openvmm, %s", *format, qemuFormats)
	}
	if err := q.check(*format); err != nil {
		return err
	}
	mode, err := diffdisk.ParseCache(*cache)
	if err != nil {
		return usagef("-t %q: want writeback, none, unsafe, writethrough or directsync", *cache)
	}
	srcFormat, err := checkFormat("-f", f.format, pos[0])
	if err != nil {
		return err
	}
	out := convertJSON{Source: pos[0], SourceFormat: srcFormat, Target: pos[1], TargetFormat: *format, Existing: *existing}
	if *existing {
		// As qemu-img convert -n: the target's own format counts, -O
		// only has to agree with it when given.
		var setO bool
		fs.Visit(func(f *flagT) {
			setO = setO || f.Name == "O" || f.Name == "o" || f.Name == "c" || f.Name == "sector-size"
		})
		if setO {
			return usagef("-n writes into DST as it is: leave out -O, -o, -c and --sector-size")
		}
		if _, err := os.Stat(pos[1]); errors.Is(err, os.ErrNotExist) && !strings.Contains(pos[1], "://") {
			return fmt.Errorf("%s does not exist: -n writes into an existing image; leave out -n to create it", pos[1])
		}
		if out.TargetFormat, err = diffdisk.ImageFormat(pos[1]); err != nil {
			return err
		}
	}
	src, err := diffdisk.OpenImage(pos[0])
	if err != nil {
		return err
	}
	defer src.Close()
	out.VirtualSize = src.Size()
	var report func(done, total int64)
	if *progress {
		p := newProgress(e)
		report = p.update
		defer p.done()
	}
	if *existing {
		err = diffdisk.ConvertInto(src, pos[1], report)
	} else {
		opts := diffdisk.ConvertOptions{Format: *format, SectorSize: *sectorSize, FormatOptions: q.options, Compressed: q.compressed, Cache: mode, Progress: report}
		err = diffdisk.Convert(src, pos[1], opts)
	}
	if err != nil {
		return err
	}
	if f.json {
		return writeJSON(e.stdout, out)
	}
	return nil
}

// progressBar prints qemu-img's "    (12.34/100%)" progress, redrawn in
// place, when stderr is a terminal; piped, -p prints nothing (a log
// should not fill with carriage returns).
type progressBar struct {
	e     *env
	last  float64
	shown bool
}

func newProgress(e *env) *progressBar { return &progressBar{e: e, last: -1} }

func (p *progressBar) update(done, total int64) {
	if !p.e.isTerminal {
		return
	}
	pct := 100.0
	if total > 0 {
		pct = float64(done) * 100 / float64(total)
	}
	if pct-p.last >= 0.01 || (pct == 100 && p.last != 100) {
		fmt.Fprintf(p.e.stderr, "\r    (%.2f/100%%)", pct)
		p.last, p.shown = pct, true
	}
}

func (p *progressBar) done() {
	if p.shown {
		fmt.Fprintln(p.e.stderr)
	}
}
