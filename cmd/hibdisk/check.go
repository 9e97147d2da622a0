package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

func init() {
	register(command{name: "check", summary: "check a layer's consistency (every problem, not just the first)", run: runCheck})
}

func runCheck(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "check", "[--repair [--force]] FILE")
	repair := fs.Bool("repair", false, "fix what is safely fixable and say exactly what changed")
	force := fs.Bool("force", false, "with --repair: also drop rows past the end and blobs of the wrong length (destroys their data)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *force && !*repair {
		return usagef("--force goes with --repair")
	}
	check := diffdisk.Check
	if *repair {
		check = func(path string) (*sqlitelayer.Report, error) {
			return diffdisk.Repair(path, sqlitelayer.RepairOptions{Force: *force})
		}
	}
	r, err := check(pos[0])
	if err != nil {
		return err
	}
	return printReport(e, pos[0], r, "No errors were found on the image.")
}

// printReport prints a check report the way qemu-img check does (one
// line per repair, note and problem) and turns problems into exit status
// 1; ok is the line printed when there are none.
func printReport(e *env, path string, r *sqlitelayer.Report, ok string) error {
	for _, s := range r.Repairs {
		fmt.Fprintf(e.stdout, "Repaired: %s\n", s)
	}
	for _, s := range r.Notes {
		fmt.Fprintf(e.stdout, "Note: %s\n", s)
	}
	for _, s := range r.Problems {
		fmt.Fprintf(e.stdout, "ERROR: %s\n", s)
	}
	if !r.OK() {
		return exitError{code: 1, msg: fmt.Sprintf("%d problem(s) found in %s", len(r.Problems), path)}
	}
	fmt.Fprintln(e.stdout, ok)
	return nil
}
