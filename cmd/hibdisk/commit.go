package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "commit", summary: "fold a diff layer into its backing file", run: runCommit})
}

// commitJSON is `hibdisk commit --output=json`: the layer committed, the
// backing file written into, and whether the layer was emptied (not
// with -d). Stable: fields are only added.
type commitJSON struct {
	Filename              string `json:"filename"`
	BackingFilename       string `json:"backing-filename"`
	BackingFilenameFormat string `json:"backing-filename-format"`
	Emptied               bool   `json:"emptied"`
}

func runCommit(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "commit", "[-d] [-p] [-q] [-f hibdisk] [--output=human|json] FILE")
	var f imgFlags
	f.addFormat(fs, "hibdisk (commit changes hibdisk layers only)")
	f.addOutput(fs, "json: one object describing the commit")
	f.addQuiet(fs)
	keep := fs.Bool("d", false, "do not empty FILE after the commit (qemu-img commit -d)")
	progress := fs.Bool("p", false, "show progress (on a terminal only)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	if err := onlyLayers("commit", f.format, pos[0]); err != nil {
		return err
	}
	opts := diffdisk.CommitOptions{Keep: *keep}
	if *progress {
		p := newProgress(e)
		opts.Progress = p.update
		defer p.done()
	}
	var out commitJSON
	if f.json {
		top, err := diffdisk.TopLayer(pos[0])
		if err != nil {
			return err
		}
		out = commitJSON{Filename: pos[0], Emptied: !*keep}
		if p := top.Parent; p != nil {
			out.BackingFilename, out.BackingFilenameFormat = p.ResolvePath(pos[0]), p.Format
		}
	}
	if err := diffdisk.Commit(pos[0], opts); err != nil {
		return err
	}
	if f.json {
		return writeJSON(e.stdout, out)
	}
	fmt.Fprintln(e.stdout, "Image committed.")
	return nil
}
