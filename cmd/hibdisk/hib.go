package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"

	"github.com/hibdisk/hibdisk/hibfile"
)

// The `hibdisk hib` group: the hibernate snapshot of a layer chain. Each
// subcommand lives in a hib_*.go file and registers itself in hibCommands.

func init() {
	register(command{name: "hib", summary: "hibernate snapshot: ps, maps, files, signals, show, diff, capture, import, export, check, migrate", run: runHib})
}

var hibCommands = map[string]command{}

func registerHib(c command) { hibCommands[c.name] = c }

func runHib(ctx context.Context, e *env, args []string) error {
	names := make([]string, 0, len(hibCommands))
	for n := range hibCommands {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(args) >= 2 && args[0] == "help" {
		// hib help SUB is hib SUB -h.
		args = append(args[1:2:2], "-h")
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(e.stdout, "usage: hibdisk hib SUBCOMMAND [flags] ARGS")
		fmt.Fprintln(e.stdout, "\nsubcommands:")
		for _, n := range names {
			fmt.Fprintf(e.stdout, "  %-8s %s\n", n, hibCommands[n].summary)
		}
		fmt.Fprintln(e.stdout, "\nRun 'hibdisk help hib SUBCOMMAND' for a subcommand's flags.")
		if len(args) == 0 {
			return usagef("missing subcommand")
		}
		return nil
	}
	c, ok := hibCommands[args[0]]
	if !ok {
		return usagef("unknown subcommand %q%s", args[0], suggestion(args[0], names, "hibdisk help hib"))
	}
	return c.run(ctx, e, args[1:])
}

// withLatest opens the chain at path and calls fn with its newest
// snapshot.
func withLatest(path string, fn func(v *hibfile.View) error) error {
	c, err := hibfile.Open(path)
	if err != nil {
		return err
	}
	defer c.Close()
	v, err := c.Latest()
	if err != nil {
		return err
	}
	return fn(v)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func parsePID(s string) (int64, error) {
	pid, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, usagef("pid %q is not a number", s)
	}
	return pid, nil
}

func hexOpt(v *int64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%#x", *v)
}
