package main

import (
	"context"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "resize", summary: "change a layer's virtual size (--shrink to make it smaller)", run: runResize})
}

func runResize(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "resize", "[--shrink] FILE [+|-]SIZE")
	shrink := fs.Bool("shrink", false, "allow shrinking, which drops the data past the new end")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	path, arg := pos[0], pos[1]
	rel := 0
	switch {
	case strings.HasPrefix(arg, "+"):
		rel, arg = 1, arg[1:]
	case strings.HasPrefix(arg, "-"):
		rel, arg = -1, arg[1:]
	}
	size, err := parseSize(arg)
	if err != nil {
		return usageError{msg: err.Error()}
	}
	if rel != 0 {
		d, err := diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
		if err != nil {
			return err
		}
		cur := d.Size()
		if err := d.Close(); err != nil {
			return err
		}
		size = cur + int64(rel)*size
		if size < 0 {
			return usagef("new size would be negative")
		}
	}
	if err := diffdisk.Resize(path, size, diffdisk.ResizeOptions{Shrink: *shrink}); err != nil {
		return err
	}
	_, err = e.stdout.Write([]byte("Image resized.\n"))
	return err
}
