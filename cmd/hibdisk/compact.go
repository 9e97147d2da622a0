package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

func init() {
	register(command{name: "compact", summary: "give a layer's free space back to the filesystem", run: runCompact})
}

// runCompact rebuilds a layer without its free pages (File.Compact), and
// converts a layer made before live reclaim into one that gives free
// space back while in use. The layer must not be in use: like every
// writer, compact takes its lock and refuses a layer someone else holds,
// naming the holder. (A layer in use that reclaims gives its space back
// through its server.)
func runCompact(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "compact", "FILE")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	f, err := sqlitelayer.Open(pos[0], sqlitelayer.OpenOptions{})
	if err != nil {
		return err
	}
	before, err := f.Stats()
	var after sqlitelayer.Stats
	if err == nil {
		err = f.Compact()
	}
	if err == nil {
		after, err = f.Stats()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	converted := ""
	if !before.Reclaims && after.Reclaims {
		converted = "; it now gives free space back while in use"
	}
	fmt.Fprintf(e.stdout, "compacted %s: %s -> %s%s\n", pos[0], formatSize(before.FileBytes), formatSize(after.FileBytes), converted)
	return nil
}
