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
	fl := newFlags(e, "get", "[-f] IMAGE[:PART] PATH DEST")
	force := fl.Bool("f", false, "replace DEST (or DEST/NAME) when it is an existing file or symlink")
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
	final := dest
	if fi, err := os.Lstat(dest); err == nil {
		switch {
		case fi.IsDir():
			return fmt.Errorf("%s exists and is a directory: remove it first, or give its parent as DEST", dest)
		case !*force:
			return fmt.Errorf("%s exists: add -f to replace it", dest)
		}
		// Extract beside it, then rename over it: a failed copy leaves
		// the old file.
		tmp, err := os.MkdirTemp(filepath.Dir(dest), ".hibdisk-get-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dest = filepath.Join(tmp, "out")
	}
	skipped, err := fsys.Extract(src.Path, dest)
	for _, p := range skipped {
		fmt.Fprintf(e.stderr, "hibdisk get: warning: skipped %s (not a regular file, directory or symlink)\n", p)
	}
	if err == nil && dest != final {
		err = os.Rename(dest, final)
	}
	return err
}
