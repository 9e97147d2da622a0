package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/hibdisk/hibdisk/hibfile"
)

func init() {
	registerHib(command{name: "ps", summary: "process tree of the newest snapshot, like ps -ef --forest", run: runHibPS})
}

// psEntry is one line of `hib ps --json`.
type psEntry struct {
	PID       int64  `json:"pid"`
	ParentPID int64  `json:"parent_pid"`
	Depth     int    `json:"depth"`
	Name      string `json:"name"`
	State     string `json:"state"`
	CwdPath   string `json:"cwd_path"`
}

func runHibPS(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib ps", "[--json] LAYER")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	return withLatest(pos[0], func(v *hibfile.View) error {
		procs, err := v.Processes()
		if err != nil {
			return err
		}
		tree, err := hibfile.Tree(procs)
		if err != nil {
			return err
		}
		if *asJSON {
			out := make([]psEntry, 0, len(tree))
			for _, n := range tree {
				out = append(out, psEntry{n.PID, n.ParentPID, n.Depth, n.Name, n.State, n.CwdPath})
			}
			return writeJSON(e.stdout, out)
		}
		fmt.Fprintf(e.stdout, "%7s %7s %-12s %s\n", "PID", "PPID", "STATE", "CMD")
		for _, n := range tree {
			name := n.Name
			if n.Depth > 0 {
				name = strings.Repeat("    ", n.Depth-1) + " \\_ " + name
			}
			fmt.Fprintf(e.stdout, "%7d %7d %-12s %s\n", n.PID, n.ParentPID, n.State, name)
		}
		return nil
	})
}
