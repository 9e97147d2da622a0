package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

func init() {
	register(command{name: "get", summary: "copy a file or directory tree out of an image's filesystem", run: runGet})
}

// runGet copies PATH to DEST, or into DEST when DEST is an existing
// directory (like cp -r), keeping modes and times.
func runGet(_ context.Context, e *env, args []string) error {
	fl := newFlags(e, "get", "IMAGE[:PART] PATH DEST")
	pos, err := parseArgs(fl, args, 3, 3)
	if err != nil {
		return err
	}
	fsys, closeImage, err := openFS(e, "get", pos[0])
	if err != nil {
		return err
	}
	defer closeImage()
	src, err := fsys.Stat(pos[1])
	if err != nil {
		return err
	}
	dest := pos[2]
	if fi, err := os.Stat(dest); err == nil && fi.IsDir() {
		name := src.Name
		if src.Path == "/" {
			name = "root"
		}
		dest = filepath.Join(dest, name)
	}
	skipped, err := fsys.Extract(src.Path, dest)
	for _, p := range skipped {
		fmt.Fprintf(e.stderr, "hibdisk get: warning: skipped %s (not a regular file, directory or symlink)\n", p)
	}
	return err
}
