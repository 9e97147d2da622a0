package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/hibdisk/hibdisk/datastore"
)

func init() {
	register(command{name: "ds", summary: "datastore entries: publish|retrieve|delete|list|snapshot|subscribe|unsubscribe", run: runDS})
}

// dsCommands are the subcommands of `hibdisk ds`.
var dsCommands = map[string]func(ctx context.Context, e *env, args []string) error{
	"publish":     runDSPublish,
	"retrieve":    runDSRetrieve,
	"delete":      runDSDelete,
	"list":        runDSList,
	"snapshot":    runDSSnapshot,
	"subscribe":   runDSSubscribe,
	"unsubscribe": runDSUnsubscribe,
}

func runDS(ctx context.Context, e *env, args []string) error {
	names := make([]string, 0, len(dsCommands))
	for n := range dsCommands {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(args) == 0 {
		return usagef("want a subcommand: publish, retrieve, delete, list, snapshot, subscribe or unsubscribe (see hibdisk help ds)")
	}
	if len(args) >= 2 && args[0] == "help" {
		// ds help SUB is ds SUB -h.
		args = append(args[1:2:2], "-h")
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(e.stdout, "usage: hibdisk ds publish|retrieve|delete|list|snapshot|subscribe|unsubscribe [flags] LAYER ...")
		fmt.Fprintln(e.stdout, "\nRun 'hibdisk help ds SUBCOMMAND' for a subcommand's flags.")
		return flag.ErrHelp
	}
	run, ok := dsCommands[args[0]]
	if !ok {
		return usagef("unknown subcommand %q%s", args[0], suggestion(args[0], names, "hibdisk help ds"))
	}
	err := run(ctx, e, args[1:])
	if errors.Is(err, datastore.ErrExists) {
		// The library names its Overwrite flag ("use overwrite"); the
		// user typed a command, whose flag is --overwrite.
		err = flagNamedError{strings.ReplaceAll(err.Error(), "use overwrite", "add --overwrite"), err}
	}
	return err
}

// flagNamedError is err with its text saying the command's flag where
// the library said its own option.
type flagNamedError struct {
	msg string
	err error
}

func (e flagNamedError) Error() string { return e.msg }
func (e flagNamedError) Unwrap() error { return e.err }

// withDatastore runs fn on the datastore of path and closes it; a close
// error (a failed final commit) is the command's error.
func withDatastore(path string, readOnly bool, fn func(ds datastore.API) error) (err error) {
	ds, err := datastore.OpenPath(path, readOnly)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := ds.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	return fn(ds)
}

func parseType(s string) (datastore.Type, error) {
	t, err := datastore.ParseType(s)
	if err != nil {
		return "", usageError{msg: err.Error()}
	}
	return t, nil
}

func runDSPublish(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "ds publish", "[--owner NAME] [--overwrite] [--private] [--hex] LAYER TYPE KEY VALUE\n"+
		"  VALUE: u32 and label a number; string text; mem text (--hex: hex digits); map SOURCE:OFFSET:LENGTH, SOURCE disk or hibernate")
	owner := fs.String("owner", "", "the publisher's name: private entries and deletion belong to it")
	overwrite := fs.Bool("overwrite", false, "replace an existing entry (a label: of that name or number); a map is never replaced")
	private := fs.Bool("private", false, "other owners cannot retrieve, overwrite, subscribe to or snapshot the entry")
	isHex := fs.Bool("hex", false, "mem VALUE is hex digits")
	pos, err := parseArgs(fs, args, 4, 4)
	if err != nil {
		return err
	}
	typ, err := parseType(pos[1])
	if err != nil {
		return err
	}
	entry, err := datastore.ParseEntry(typ, pos[2], pos[3], datastore.ParseOptions{Hex: *isHex, ParseSize: parseSize})
	if err != nil {
		return usageError{msg: err.Error()}
	}
	entry.Owner = *owner
	var flags datastore.Flags
	if *overwrite {
		flags |= datastore.Overwrite
	}
	if *private {
		flags |= datastore.Private
	}
	return withDatastore(pos[0], false, func(ds datastore.API) error {
		return ds.Publish(entry, flags)
	})
}

// retrieveJSON is `hibdisk ds retrieve --json`: the entry, and for a map
// the bytes read (base64, as encoding/json writes []byte).
type retrieveJSON struct {
	datastore.Entry
	Data []byte `json:"data,omitempty"`
}

func runDSRetrieve(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "ds retrieve", "[--owner NAME] [--max N] [--snapshot N] [--hex] [--number] [--json] LAYER TYPE KEY")
	owner := fs.String("owner", "", "the reader's name (for private entries)")
	maxLen := fs.Int("max", datastore.MaxValueLen, "length bound: a longer string fails, a mem or map is cut (partial retrieve)")
	snapshot := fs.Int("snapshot", 0, "map: read this snapshot instead of the live range")
	isHex := fs.Bool("hex", false, "print mem and map bytes as hex")
	byNumber := fs.Bool("number", false, "label: KEY is a number; print its name")
	asJSON := fs.Bool("json", false, "print the entry as JSON")
	pos, err := parseArgs(fs, args, 3, 3)
	if err != nil {
		return err
	}
	typ, err := parseType(pos[1])
	if err != nil {
		return err
	}
	if *maxLen < 0 {
		return usagef("--max %d: want a length >= 0", *maxLen)
	}
	if *byNumber && typ != datastore.Label {
		return usagef("--number is for labels")
	}
	if *snapshot != 0 && typ != datastore.Map {
		return usagef("--snapshot is for maps")
	}
	key := pos[2]
	return withDatastore(pos[0], true, func(ds datastore.API) error {
		if *byNumber {
			return printLabelName(e, ds, key, *owner)
		}
		ent, data, err := datastore.RetrieveValue(ds, key, typ, *owner, *maxLen, *snapshot)
		if err != nil {
			return err
		}
		return printRetrieved(e, typ, ent, data, *asJSON, *isHex)
	})
}

// printLabelName prints the name of the label whose number is key.
func printLabelName(e *env, ds datastore.API, key, owner string) error {
	n, err := strconv.ParseUint(key, 0, 32)
	if err != nil {
		return usagef("label number %q: want a number from 0 to 4294967295", key)
	}
	name, err := ds.RetrieveLabelName(uint32(n), owner)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, name)
	return nil
}

// printRetrieved prints a retrieved entry of type typ: its value, or for a mem or
// map the bytes retrieved (data), raw or as hex; with asJSON the entry.
func printRetrieved(e *env, typ datastore.Type, ent datastore.Entry, data []byte, asJSON, isHex bool) error {
	if asJSON {
		if typ == datastore.Mem {
			ent.Mem = data
		}
		out := retrieveJSON{Entry: ent}
		if typ == datastore.Map {
			out.Data = data
		}
		return printJSON(e.stdout, out)
	}
	switch typ {
	case datastore.U32:
		fmt.Fprintln(e.stdout, ent.U32)
	case datastore.Label:
		fmt.Fprintln(e.stdout, ent.Label)
	case datastore.String:
		fmt.Fprintln(e.stdout, ent.String)
	default:
		if isHex {
			fmt.Fprintln(e.stdout, hex.EncodeToString(data))
		} else {
			e.stdout.Write(data)
		}
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runDSDelete(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "ds delete", "[--owner NAME] LAYER TYPE KEY")
	owner := fs.String("owner", "", "the entry's owner (only the owner deletes)")
	pos, err := parseArgs(fs, args, 3, 3)
	if err != nil {
		return err
	}
	typ, err := parseType(pos[1])
	if err != nil {
		return err
	}
	return withDatastore(pos[0], false, func(ds datastore.API) error {
		return ds.Delete(pos[2], typ, *owner)
	})
}

func runDSList(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "ds list", "[--owner NAME] [--json] LAYER")
	owner := fs.String("owner", "", "the reader's name (its private entries show their values)")
	asJSON := fs.Bool("json", false, "print a JSON array of entries")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	return withDatastore(pos[0], true, func(ds datastore.API) error {
		entries, err := ds.List(*owner)
		if err != nil {
			return err
		}
		if *asJSON {
			if entries == nil {
				entries = []datastore.Entry{}
			}
			return printJSON(e.stdout, entries)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TYPE\tKEY\tOWNER\tFLAGS\tDEPTH\tVALUE")
		for _, ent := range entries {
			flags := "-"
			if ent.Private {
				flags = "private"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", ent.Type, ent.Key, orDash(ent.Owner), flags, ent.Depth, entryValue(ent, *owner))
		}
		return tw.Flush()
	})
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// entryValue renders an entry's value on one line.
func entryValue(ent datastore.Entry, reader string) string {
	if ent.Private && ent.Owner != reader {
		return "(private)"
	}
	switch ent.Type {
	case datastore.U32:
		return strconv.FormatUint(uint64(ent.U32), 10)
	case datastore.Label:
		return strconv.FormatUint(uint64(ent.Label), 10)
	case datastore.String:
		return strconv.Quote(ent.String)
	case datastore.Mem:
		if len(ent.Mem) > 32 {
			return fmt.Sprintf("%s... (%d bytes)", hex.EncodeToString(ent.Mem[:32]), len(ent.Mem))
		}
		return hex.EncodeToString(ent.Mem)
	case datastore.Map:
		return fmt.Sprintf("%s:%d:%d snapshots=%d", ent.Map.Source, ent.Map.Offset, ent.Map.Length, ent.Snapshots)
	}
	return ""
}

func runDSSnapshot(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "ds snapshot", "[--owner NAME] LAYER KEY")
	owner := fs.String("owner", "", "the snapshotter's name (for private maps)")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	return withDatastore(pos[0], false, func(ds datastore.API) error {
		n, err := ds.SnapshotMap(pos[1], *owner)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, n)
		return nil
	})
}

func runDSSubscribe(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "ds subscribe", "[--owner NAME] [--type T,...] [--initial] [--overwrite] [--once] [--json] LAYER PATTERN")
	owner := fs.String("owner", "", "the subscriber's name: one subscription each; running again with the same PATTERN and types resumes it")
	typeList := fs.String("type", "", "comma list of types to follow (default: all)")
	initial := fs.Bool("initial", false, "report the existing matching entries first")
	overwrite := fs.Bool("overwrite", false, "replace the owner's subscription if it differs")
	once := fs.Bool("once", false, "report what changed and exit instead of following")
	asJSON := fs.Bool("json", false, "print one JSON object per change")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	var types []datastore.Type
	if *typeList != "" {
		for _, s := range strings.Split(*typeList, ",") {
			t, err := parseType(s)
			if err != nil {
				return err
			}
			types = append(types, t)
		}
	}
	opts := datastore.FollowOptions{Owner: *owner, Pattern: pos[1], Types: types, Once: *once}
	if *initial {
		opts.Flags |= datastore.Initial
	}
	if *overwrite {
		opts.Flags |= datastore.Overwrite
	}
	return withDatastore(pos[0], false, func(ds datastore.API) error {
		return datastore.Follow(ctx, ds, opts, func(c datastore.Change) error {
			return printChange(e.stdout, c, *asJSON)
		})
	})
}

func printChange(w io.Writer, c datastore.Change, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(c)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	what := "changed"
	if c.Deleted {
		what = "deleted"
	}
	_, err := fmt.Fprintf(w, "%s %s %s %s\n", what, c.Type, c.Key, orDash(c.Owner))
	return err
}

func runDSUnsubscribe(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "ds unsubscribe", "[--owner NAME] LAYER")
	owner := fs.String("owner", "", "the subscriber's name")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	return withDatastore(pos[0], false, func(ds datastore.API) error {
		return ds.Unsubscribe(*owner)
	})
}
