package main

import (
	"context"
	"fmt"
	"os"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

func init() {
	register(command{name: "check", summary: "check a layer's consistency (every problem, not just the first)", run: runCheck})
}

// qemu-img check's exit statuses: a check that could not run exits 1
// (like any failed command).
const (
	checkCorrupt  = 2  // corruption found (or left after a repair)
	checkLeaks    = 3  // only leaks: wasted space, no data at risk
	checkNoChecks = 63 // the format has no checks (a raw image)
)

// checkJSON is `hibdisk check --output=json`, with qemu-img check's
// field names where it has them. corruptions counts every problem but
// the leaks; problems lists them all (leaks included), repairs what -r
// changed, notes what was not verified. Stable: fields are only added.
type checkJSON struct {
	Filename    string   `json:"filename"`
	Format      string   `json:"format"`
	CheckErrors int      `json:"check-errors"`
	Corruptions int      `json:"corruptions"`
	Leaks       int      `json:"leaks"`
	Problems    []string `json:"problems"`
	Repairs     []string `json:"repairs"`
	Notes       []string `json:"notes"`
}

func runCheck(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "check", "[-r leaks|all] [--output=human|json] [-q] [-f hibdisk] [-U] FILE")
	var f imgFlags
	f.addFormat(fs, "hibdisk (the only format with checks)")
	f.addOutput(fs, "json: one object, qemu-img check's field names")
	f.addQuiet(fs)
	f.addShare(fs)
	mode := fs.String("r", "", "repair: leaks (what loses no data: --repair) or all (also what drops data: --repair --force)")
	repair := fs.Bool("repair", false, "fix what is safely fixable and say exactly what changed (-r leaks)")
	force := fs.Bool("force", false, "with --repair: also drop rows past the end and blobs of the wrong length (destroys their data; -r all)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	switch *mode {
	case "":
	case "leaks":
		*repair = true
	case "all":
		*repair, *force = true, true
	default:
		return usagef("-r %s: want leaks or all", *mode)
	}
	if *force && !*repair {
		return usagef("--force goes with --repair")
	}
	// A missing file goes to the check itself, which names what an
	// interrupted create or convert left beside it.
	format := disklayer.FormatHibdisk
	if _, err := os.Stat(pos[0]); err == nil {
		if format, err = checkFormat("-f", f.format, pos[0]); err != nil {
			return err
		}
	}
	if format != disklayer.FormatHibdisk {
		return exitError{code: checkNoChecks, msg: fmt.Sprintf("%s is a %s image: hibdisk checks hibdisk layers only (this format has no checks here; for a QEMU format: qemu-img check)", pos[0], format)}
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
	corrupt := len(r.Problems) - len(r.Leaks)
	code := 0
	switch {
	case corrupt > 0:
		code = checkCorrupt
	case len(r.Leaks) > 0:
		code = checkLeaks
	}
	if f.json {
		j := checkJSON{Filename: pos[0], Format: format, Corruptions: corrupt, Leaks: len(r.Leaks),
			Problems: nonNil(r.Problems), Repairs: nonNil(r.Repairs), Notes: nonNil(r.Notes)}
		if err := writeJSON(e.stdout, j); err != nil {
			return err
		}
		if code != 0 {
			return exitError{code: code}
		}
		return nil
	}
	if err := printReport(e, pos[0], r, "No errors were found on the image.", code); err != nil {
		return err
	}
	if code == checkLeaks {
		// qemu-img's hint: leaks are safe to repair.
		fmt.Fprintf(e.stdout, "%d leak(s) found (space wasted, no data at risk): hibdisk check -r leaks %s repairs them\n", len(r.Leaks), pos[0])
		return exitError{code: code}
	}
	return nil
}

// printReport prints a check report the way qemu-img check does (one
// line per repair, note and problem) and turns problems into exit status
// code (hibdisk check), or 2 as qemu-img check's corruption (code 0: hib
// check); ok is the line printed
// when there are none. Leaks alone (code 3) print no error line: the
// caller says what to do.
func printReport(e *env, path string, r *sqlitelayer.Report, ok string, code int) error {
	for _, s := range r.Repairs {
		fmt.Fprintf(e.stdout, "Repaired: %s\n", s)
	}
	for _, s := range r.Notes {
		fmt.Fprintf(e.stdout, "Note: %s\n", s)
	}
	leaks := map[string]bool{}
	for _, s := range r.Leaks {
		leaks[s] = true
	}
	for _, s := range r.Problems {
		if leaks[s] {
			fmt.Fprintf(e.stdout, "Leaked: %s\n", s)
		} else {
			fmt.Fprintf(e.stdout, "ERROR: %s\n", s)
		}
	}
	if code == checkLeaks {
		return nil
	}
	if !r.OK() {
		if code == 0 {
			code = checkCorrupt
		}
		return exitError{code: code, msg: fmt.Sprintf("%d problem(s) found in %s", len(r.Problems), path)}
	}
	fmt.Fprintln(e.stdout, ok)
	return nil
}
