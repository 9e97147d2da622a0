package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/hibdisk/hibdisk/hibfile"
)

// hib import, hib export: the JSON format documented in hibfile/json.go.

func init() {
	registerHib(command{name: "import", summary: "save a snapshot from JSON (FILE.json or - for stdin) into a layer", run: runHibImport})
	registerHib(command{name: "export", summary: "print the newest snapshot of a chain as JSON, content included", run: runHibExport})
}

func runHibImport(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib import", "FILE.json LAYER")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	var r io.Reader = os.Stdin
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	res, err := hibfile.Import(pos[1], r)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "imported snapshot %d into %s: %d bytes of content, %d changed blocks stored\n", res.SnapshotID, pos[1], res.StoredBytes, res.ChangedBlocks)
	return nil
}

func runHibExport(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib export", "LAYER")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	return withLatest(pos[0], func(v *hibfile.View) error { return hibfile.Export(e.stdout, v) })
}
