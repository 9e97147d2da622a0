package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/hibfile"
)

// hib maps, hib files, hib signals: one process's rows.

func init() {
	registerHib(command{name: "maps", summary: "memory map of one process (where its content is in the hibernate file)", run: runHibMaps})
	registerHib(command{name: "files", summary: "open files of one process", run: runHibFiles})
	registerHib(command{name: "signals", summary: "signal dispositions of one process", run: runHibSignals})
}

// withProcess parses [--json] LAYER PID and calls fn with the process.
func withProcess(e *env, name string, args []string, fn func(p hibfile.Process, asJSON bool) error) error {
	fs := newFlags(e, "hib "+name, "[--json] LAYER PID")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	pid, err := parsePID(pos[1])
	if err != nil {
		return err
	}
	return withLatest(pos[0], func(v *hibfile.View) error {
		p, err := v.Process(pid)
		if err != nil {
			return err
		}
		return fn(p, *asJSON)
	})
}

func runHibMaps(_ context.Context, e *env, args []string) error {
	return withProcess(e, "maps", args, func(p hibfile.Process, asJSON bool) error {
		if asJSON {
			return writeJSON(e.stdout, nonNil(p.Mappings))
		}
		fmt.Fprintf(e.stdout, "%-33s %-5s %10s %-20s %-14s %s\n", "ADDRESS", "PERMS", "SIZE_KB", "FLAGS", "BLOB_OFFSET", "PATH")
		for _, m := range p.Mappings {
			fmt.Fprintf(e.stdout, "%016x-%016x %-5s %10d %-20s %-14s %s\n", m.VirtualAddr, m.End(), m.Permissions, m.Size/1024, m.Flags, hexOpt(m.BlobOffset), m.Path)
		}
		return nil
	})
}

func runHibFiles(_ context.Context, e *env, args []string) error {
	return withProcess(e, "files", args, func(p hibfile.Process, asJSON bool) error {
		if asJSON {
			return writeJSON(e.stdout, nonNil(p.Files))
		}
		fmt.Fprintf(e.stdout, "%4s %12s %-32s %s\n", "FD", "POSITION", "FLAGS", "PATH")
		for _, f := range p.Files {
			fmt.Fprintf(e.stdout, "%4d %12d %-32s %s\n", f.FD, f.Position, f.Flags, f.Path)
		}
		return nil
	})
}

// signalNames are the Linux (x86-64) names of the standard signals.
var signalNames = map[int64]string{
	1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
	9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
	16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU",
	23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO",
	30: "SIGPWR", 31: "SIGSYS",
}

func signalName(n int64) string {
	if s, ok := signalNames[n]; ok {
		return s
	}
	if n >= 34 && n <= 64 {
		return fmt.Sprintf("SIGRTMIN+%d", n-34)
	}
	return fmt.Sprintf("SIG%d", n)
}

func runHibSignals(_ context.Context, e *env, args []string) error {
	return withProcess(e, "signals", args, func(p hibfile.Process, asJSON bool) error {
		if asJSON {
			return writeJSON(e.stdout, nonNil(p.Signals))
		}
		fmt.Fprintf(e.stdout, "%3s %-12s %-11s %-18s %s\n", "SIG", "NAME", "DISPOSITION", "HANDLER", "FLAGS")
		for _, g := range p.Signals {
			handler := hexOpt(g.HandlerAddress)
			if g.HandlerAddress == nil && g.Disposition == hibfile.DispositionHandler {
				handler = "unknown"
			}
			fmt.Fprintf(e.stdout, "%3d %-12s %-11s %-18s %s\n", g.Number, signalName(g.Number), g.Disposition, handler, g.Flags)
		}
		return nil
	})
}

// nonNil makes empty lists print as [] in JSON.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
