package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

// hib import, hib export: the JSON format documented in hibfile/json.go.

func init() {
	registerHib(command{name: "import", summary: "save a snapshot from JSON (FILE.json or - for stdin) into a layer", run: runHibImport})
	registerHib(command{name: "export", summary: "print the newest snapshot of a chain as JSON, content included", run: runHibExport})
}

func runHibImport(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib import", "[-s SIZE] FILE.json LAYER")
	sizeFlag := fs.String("s", "1M", "virtual disk size of LAYER when import creates it (it does when LAYER does not exist)")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	size, err := parseSize(*sizeFlag)
	if err != nil {
		return usageError{msg: err.Error()}
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
	layer := pos[1]
	// A snapshot needs a layer to live in: make a base layer when there
	// is none, and take it away again if the import fails.
	created := false
	if _, err := os.Lstat(layer); errors.Is(err, iofs.ErrNotExist) {
		if err := diffdisk.Create(layer, diffdisk.CreateOptions{Size: size}); err != nil {
			return err
		}
		created = true
	}
	res, err := hibfile.Import(layer, r)
	if err != nil {
		if created {
			diffdisk.RemoveLayerFiles(layer)
		}
		if errors.Is(err, disklayer.ErrInvalid) {
			// What is wrong is the input, not the layer.
			name := pos[0]
			if name == "-" {
				name = "standard input"
			}
			return fmt.Errorf("%s is not a snapshot hibdisk can import (%s); hib export writes one", name, strings.TrimSuffix(strings.TrimPrefix(err.Error(), fmt.Sprintf("import into %q: ", layer)), ": "+disklayer.ErrInvalid.Error()))
		}
		return err
	}
	if created {
		fmt.Fprintf(e.stdout, "created %s (a %s base layer)\n", layer, formatSize(size))
	}
	fmt.Fprintf(e.stdout, "imported snapshot %d into %s: %d bytes of content, %d changed blocks stored\n", res.SnapshotID, layer, res.StoredBytes, res.ChangedBlocks)
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
