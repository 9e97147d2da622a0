package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

func init() {
	register(command{name: "version", summary: "print hibdisk's version, source revision, Go and SQLite driver versions (also --version)", run: runVersion})
}

// sqliteModules are the modules that bind and embed SQLite (a Go
// translation of it); their versions from the build information name the
// SQLite build without opening a database.
var sqliteModules = map[string]bool{
	"github.com/ncruces/go-sqlite3":         true,
	"github.com/ncruces/go-sqlite3-wasm/v6": true,
}

func runVersion(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "version", "")
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	version, revision, when, modified := "(unknown)", "", "", false
	var sqlite []string
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		for _, d := range bi.Deps {
			if sqliteModules[d.Path] {
				sqlite = append(sqlite, d.Path+" "+d.Version)
			}
		}
	}
	fmt.Fprintf(e.stdout, "hibdisk version %s\n", version)
	if revision != "" {
		if modified {
			revision += " (modified)"
		}
		fmt.Fprintf(e.stdout, "revision: %s\n", revision)
	}
	if when != "" {
		fmt.Fprintf(e.stdout, "revision time: %s\n", when)
	}
	fmt.Fprintf(e.stdout, "go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if len(sqlite) > 0 {
		fmt.Fprintf(e.stdout, "sqlite: %s\n", strings.Join(sqlite, ", "))
	}
	return nil
}
