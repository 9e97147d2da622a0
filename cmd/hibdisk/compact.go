package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

func init() {
	register(command{name: "compact", summary: "give a layer's free space back to the filesystem", run: runCompact})
}

// runCompact rebuilds a layer without its free pages (File.Compact). The
// layer must not be in use: like every writer, compact takes its lock
// and refuses a layer someone else holds, naming the holder.
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
	fmt.Fprintf(e.stdout, "compacted %s: %s -> %s\n", pos[0], formatSize(before.FileBytes), formatSize(after.FileBytes))
	return nil
}
