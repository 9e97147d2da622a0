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
	fs := newFlags(e, "commit", "[-d] FILE")
	keep := fs.Bool("d", false, "do not empty FILE after the commit (qemu-img commit -d)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := diffdisk.Commit(pos[0], diffdisk.CommitOptions{Keep: *keep}); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "Image committed.")
	return nil
}
