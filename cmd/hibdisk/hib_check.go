package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

// hib check checks only the hibernate metadata (hibdisk check runs it
// too, with the layer checks); hib migrate brings a layer's schema up to
// date.

func init() {
	registerHib(command{name: "check", summary: "check (or --repair) the hibernate metadata of a layer", run: runHibCheck})
	registerHib(command{name: "migrate", summary: "migrate a layer to the current schema (also converts the seed's v0 tables)", run: runHibMigrate})
}

func runHibCheck(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib check", "[--repair] LAYER")
	repair := fs.Bool("repair", false, "fix what follows from the rest (orphan rows, totals) and say what changed")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	check := hibfile.Check
	if *repair {
		check = hibfile.Repair
	}
	r, err := check(pos[0])
	if err != nil {
		return err
	}
	if err := checkOSImage(pos[0], r); err != nil {
		return err
	}
	return printReport(e, pos[0], r, "No errors were found in the hibernate metadata.", 0)
}

func runHibMigrate(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib migrate", "LAYER")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	from, to, err := sqlitelayer.Migrate(pos[0])
	if err != nil {
		return err
	}
	if from == to {
		fmt.Fprintf(e.stdout, "%s: schema version %d is current\n", pos[0], from)
		return nil
	}
	fmt.Fprintf(e.stdout, "%s: migrated from schema version %d to %d\n", pos[0], from, to)
	return nil
}
