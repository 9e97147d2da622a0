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
	fs := newFlags(e, "resize", "[--shrink] [-q] [-f hibdisk] FILE [+|-]SIZE")
	var f imgFlags
	f.addFormat(fs, "hibdisk (resize changes hibdisk layers only)")
	f.addQuiet(fs)
	shrink := fs.Bool("shrink", false, "allow shrinking, which drops the data past the new end")
	// A relative size such as -64M is the size argument, not a flag (as
	// in qemu-img resize FILE -64M): set it aside before parsing.
	var rest, negative []string
	for _, a := range args {
		if len(a) > 1 && a[0] == '-' && (a[1] >= '0' && a[1] <= '9' || a[1] == '.') {
			negative = append(negative, a)
			continue
		}
		rest = append(rest, a)
	}
	if len(negative) > 1 {
		return usagef("one size, not %d: hibdisk resize FILE [+|-]SIZE", len(negative))
	}
	pos, err := parseArgs(fs, rest, 2-len(negative), 2-len(negative))
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	pos = append(pos, negative...)
	path, arg := pos[0], pos[1]
	if err := onlyLayers("resize", f.format, path); err != nil {
		return err
	}
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
