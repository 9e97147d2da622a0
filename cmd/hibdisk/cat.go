package main

import (
	"context"
	"fmt"
	"io"
)

func init() {
	register(command{name: "cat", summary: "print a file from an image's filesystem", run: runCat})
}

func runCat(_ context.Context, e *env, args []string) error {
	fl := newFlags(e, "cat", "IMAGE[:PART] PATH")
	pos, err := parseArgs(fl, args, 2, 2)
	if err != nil {
		return err
	}
	fsys, closeImage, err := openFS(e, "cat", pos[0])
	if err != nil {
		return err
	}
	defer closeImage()
	r, err := fsys.Open(pos[1])
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := io.Copy(e.stdout, r); err != nil {
		return fmt.Errorf("cat %s: %w", pos[1], err)
	}
	return nil
}
