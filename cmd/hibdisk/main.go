// Command hibdisk creates, inspects and serves hibdisk layers: sparse
// SQLite disk images that stack into differencing chains.
//
// Each subcommand lives in its own file and is thin: it parses flags,
// calls one library function, and prints. Errors are one line on stderr
// and a non-zero exit status: 1 for a failed operation, 2 for bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand.
type command struct {
	name    string
	summary string // one line for the usage listing
	run     func(ctx context.Context, env *env, args []string) error
}

// env is what a subcommand may touch besides its arguments, so tests can
// run commands in-process and capture their output.
type env struct {
	stdout io.Writer
	stderr io.Writer
	// isTerminal reports whether stderr is a terminal (progress bars).
	isTerminal bool
	// usage, when set, receives the flags a command's -h prints: how
	// `hibdisk completion` and `hibdisk man` read every command's usage.
	usage func(*flagSet)
	// jsonErrors is set by a command asked for JSON output (besides
	// --json or --output=json on its command line, which run sees): its
	// error is then one JSON object on stderr (jsonerr.go).
	jsonErrors bool
}

var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

// usageError marks bad invocations (exit status 2). cmd, when set, is the
// command as typed ("hib import") for the error line; else the top-level
// command names it.
type usageError struct{ msg, cmd string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{msg: fmt.Sprintf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// HIBDISK_CPUPROFILE=FILE profiles a whole command (make bench-nbd
	// uses it to see where a slow cell spends its time).
	// os.Exit skips deferred calls: the profile is stopped explicitly.
	var profile *os.File
	if path := os.Getenv("HIBDISK_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			profile = f
		}
	}
	code := run(ctx, os.Args[1:], &env{stdout: os.Stdout, stderr: os.Stderr, isTerminal: isTerminal(os.Stderr)})
	stop()
	if profile != nil {
		pprof.StopCPUProfile()
		profile.Close()
	}
	os.Exit(code)
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, e *env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		printUsage(e.stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	switch args[0] {
	case "help":
		if len(args) == 1 {
			printUsage(e.stdout)
			return 0
		}
		// help CMD [SUB] is CMD [SUB] -h: that command's own usage.
		args = append(append([]string{}, args[1:]...), "-h")
	case "--version", "-V":
		args = []string{"version"}
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(e.stderr, "hibdisk: unknown command %q%s\n", args[0],
			suggestion(args[0], append(commandNames(), "help"), "hibdisk help"))
		return 2
	}
	err := c.run(ctx, e, args[1:])
	asJSON := wantsJSON(args[1:])
	fail := func(name, msg string, code int) int {
		if msg != "" { // empty: a verdict (compare: different), not an error
			printError(e.stderr, asJSON || e.jsonErrors, name, msg, code)
		}
		return code
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(exitError)):
		var x exitError
		errors.As(err, &x)
		if x.err != nil {
			return fail(c.name, explain(c.name, x.err), x.code)
		}
		return fail(c.name, oneLine(x.msg), x.code)
	case errors.As(err, new(usageError)):
		var u usageError
		errors.As(err, &u)
		name := c.name
		if u.cmd != "" {
			name = u.cmd
		}
		return fail(name, oneLine(u.msg), 2)
	default:
		return fail(c.name, explain(c.name, err), 1)
	}
}

// oneLine keeps an error to the one line the CLI contract promises.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: hibdisk COMMAND [flags] ARGS")
	fmt.Fprintln(w, "\ncommands:")
	for _, n := range commandNames() {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'hibdisk help COMMAND' (or 'hibdisk COMMAND -h') for a command's flags.")
}

func commandNames() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// flagSet is a command's flags with what its usage needs: its help (-h)
// goes to stdout, its errors come back as one-line usage errors, and
// nothing is printed by the flag package itself.
type flagSet struct {
	*flag.FlagSet
	e        *env
	synopsis string
}

// newFlags returns a command's FlagSet; name is the command as typed
// ("create", "hib import").
func newFlags(e *env, name, synopsis string) *flagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// The flag package prints the error and the whole usage on any
	// mistake; parseArgs reports it in one line instead.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs, e: e, synopsis: synopsis}
}

// printUsage writes the command's synopsis and flags to stdout (-h).
func (fs *flagSet) printUsage() {
	if fs.e.usage != nil {
		fs.e.usage(fs)
	}
	w := fs.e.stdout
	fmt.Fprintln(w, strings.TrimSpace("usage: hibdisk "+fs.Name()+" "+fs.synopsis))
	var n int
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
}

// parseArgs parses flags (which may come before or after the positional
// arguments, as qemu-img allows) and checks the positional count. -h and
// --help print the command's usage to stdout and return flag.ErrHelp
// (exit 0); a bad flag is one line naming where to look.
func parseArgs(fs *flagSet, args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.printUsage()
				return nil, err
			}
			return nil, usageError{fmt.Sprintf("%v (see hibdisk help %s)", err, fs.Name()), fs.Name()}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		want := fmt.Sprintf("%d", min)
		if max != min {
			if max < 0 {
				want = fmt.Sprintf("at least %d", min)
			} else {
				want = fmt.Sprintf("%d to %d", min, max)
			}
		}
		return nil, usageError{fmt.Sprintf("want %s argument(s), got %d (see hibdisk help %s)", want, len(pos), fs.Name()), fs.Name()}
	}
	return pos, nil
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// exitError ends a command with a specific status; err (explained) or
// msg, when not empty, is printed as the error line.
type exitError struct {
	code int
	msg  string
	err  error
}

func (e exitError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return e.msg
}

func (e exitError) Unwrap() error { return e.err }

// flagT names flag.Flag for Visit callbacks.
type flagT = flag.Flag

// fileSize is the size of path on disk (allocated bytes, as qemu-img's
// "disk size" reports), or its length when that is unknown.
func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512, nil
	}
	return fi.Size(), nil
}
