package main

import (
	"context"
	"fmt"
	"os"

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
	before := layerFileBytes(pos[0])
	f, err := sqlitelayer.Open(pos[0], sqlitelayer.OpenOptions{})
	if err != nil {
		return err
	}
	err = f.Compact()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "compacted %s: %s -> %s\n", pos[0], formatSize(before), formatSize(layerFileBytes(pos[0])))
	return nil
}

// layerFileBytes is the size of a layer's file and its WAL.
func layerFileBytes(path string) int64 {
	var n int64
	for _, p := range []string{path, path + "-wal"} {
		if st, err := os.Stat(p); err == nil {
			n += st.Size()
		}
	}
	return n
}
