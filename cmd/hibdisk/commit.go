package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "commit", summary: "fold a diff layer into its backing file", run: runCommit})
}

func runCommit(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "commit", "FILE")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := diffdisk.Commit(pos[0]); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "Image committed.")
	return nil
}
