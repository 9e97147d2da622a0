package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hibdisk/hibdisk/remote/chunks"
)

// `hibdisk cache ls|prune`: the machine's cache of verified chunks of
// remote layers (package remote/chunks), shared by every job.

func init() {
	register(command{name: "cache", summary: "the machine's cache of remote layer chunks (cache ls|prune)", run: runCache})
}

// cacheCommands are the subcommands of `hibdisk cache`.
var cacheCommands = map[string]func(ctx context.Context, e *env, args []string) error{
	"ls":    runCacheLs,
	"prune": runCachePrune,
}

func runCache(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("want a cache command: ls or prune (see hibdisk help cache)")
	}
	if len(args) >= 2 && args[0] == "help" {
		// cache help SUB is cache SUB -h.
		args = append(args[1:2:2], "-h")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprintln(e.stdout, "usage: hibdisk cache ls [--dir DIR] [-l] [--json]")
		fmt.Fprintln(e.stdout, "       hibdisk cache prune [--dir DIR] [--max SIZE] [--json]")
		fmt.Fprintln(e.stdout, "\nThe cache is $HIBDISK_CACHE, else $XDG_CACHE_HOME/hibdisk, else ~/.cache/hibdisk.")
		fmt.Fprintln(e.stdout, "Run 'hibdisk help cache SUBCOMMAND' for a subcommand's flags.")
		return nil
	}
	run, ok := cacheCommands[args[0]]
	if !ok {
		return usagef("unknown cache command %q%s", args[0], suggestion(args[0], sortedKeys(cacheCommands), "hibdisk help cache"))
	}
	return run(ctx, e, args[1:])
}

// addCacheDir registers --dir.
func addCacheDir(fs *flagSet) *string {
	return fs.String("dir", "", "the cache directory (default: $HIBDISK_CACHE, else $XDG_CACHE_HOME/hibdisk, else ~/.cache/hibdisk)")
}

func cacheDir(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	return chunks.DefaultDir()
}

// cacheLsJSON is `hibdisk cache ls --json`: the directory, its totals,
// and every chunk, least recently used first. Stable: fields are only
// added.
type cacheLsJSON struct {
	Dir    string           `json:"dir"`
	Count  int              `json:"chunks"`
	Bytes  int64            `json:"bytes"`
	Chunks []cacheChunkJSON `json:"entries"`
}

type cacheChunkJSON struct {
	Digest string    `json:"digest"`
	Size   int64     `json:"size"`
	Used   time.Time `json:"used"`
}

func runCacheLs(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "cache ls", "[--dir DIR] [-l] [--json]")
	dirFlag := addCacheDir(fs)
	long := fs.Bool("l", false, "list every chunk: digest, size, last use (least recently used first)")
	asJSON := fs.Bool("json", false, "print JSON (the totals and every chunk)")
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	if *asJSON {
		e.jsonErrors = true
	}
	dir, err := cacheDir(*dirFlag)
	if err != nil {
		return err
	}
	out := cacheLsJSON{Dir: dir, Chunks: []cacheChunkJSON{}}
	// A cache that was never made is empty: ls does not make it.
	if _, err := os.Stat(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("chunk cache %s: %w", dir, err)
	} else if err == nil {
		c, err := chunks.OpenCache(dir, 0)
		if err != nil {
			return err
		}
		entries, err := c.List()
		if err != nil {
			return err
		}
		for _, en := range entries {
			out.Count++
			out.Bytes += en.Size
			out.Chunks = append(out.Chunks, cacheChunkJSON{Digest: en.Name(), Size: en.Size, Used: en.Used.UTC()})
		}
	}
	if *asJSON {
		return writeJSON(e.stdout, out)
	}
	if *long {
		for _, c := range out.Chunks {
			fmt.Fprintf(e.stdout, "%s  %10d  %s\n", c.Digest, c.Size, c.Used.Format(time.RFC3339))
		}
	}
	fmt.Fprintf(e.stdout, "%s: %d chunks, %s\n", dir, out.Count, formatSize(out.Bytes))
	return nil
}

// cachePruneJSON is `hibdisk cache prune --json`. Stable: fields are
// only added.
type cachePruneJSON struct {
	Dir          string `json:"dir"`
	Removed      int    `json:"removed"`
	RemovedBytes int64  `json:"removed-bytes"`
	Kept         int    `json:"kept"`
	KeptBytes    int64  `json:"kept-bytes"`
}

func runCachePrune(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "cache prune", "[--dir DIR] [--max SIZE] [--json]")
	dirFlag := addCacheDir(fs)
	maxFlag := fs.String("max", "", "remove the least recently used chunks until the cache holds at most SIZE (0 empties it; default: $HIBDISK_CACHE_SIZE, else "+formatSizeFlag(chunks.DefaultCacheBytes)+")")
	asJSON := fs.Bool("json", false, "print JSON (what was removed and kept)")
	if _, err := parseArgs(fs, args, 0, 0); err != nil {
		return err
	}
	if *asJSON {
		e.jsonErrors = true
	}
	var maxBytes int64
	var err error
	if *maxFlag == "" {
		if maxBytes, err = chunks.DefaultMaxBytes(); err != nil {
			return err
		}
	} else if maxBytes, err = parseSize(*maxFlag); err != nil {
		return usageError{fmt.Sprintf("--max: %v (see hibdisk help cache prune)", err), "cache prune"}
	}
	dir, err := cacheDir(*dirFlag)
	if err != nil {
		return err
	}
	out := cachePruneJSON{Dir: dir}
	if _, err := os.Stat(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("chunk cache %s: %w", dir, err)
	} else if err == nil {
		c, err := chunks.OpenCache(dir, 0)
		if err != nil {
			return err
		}
		r, err := c.Prune(maxBytes)
		if err != nil {
			return err
		}
		out = cachePruneJSON{Dir: dir, Removed: r.Removed, RemovedBytes: r.RemovedBytes, Kept: r.Kept, KeptBytes: r.KeptBytes}
	}
	if *asJSON {
		return writeJSON(e.stdout, out)
	}
	fmt.Fprintf(e.stdout, "%s: removed %d chunks (%s), kept %d (%s)\n", dir, out.Removed, formatSize(out.RemovedBytes), out.Kept, formatSize(out.KeptBytes))
	return nil
}

// formatSizeFlag prints a size as parseSize reads it back: "16G".
func formatSizeFlag(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.suffix)
		}
	}
	return fmt.Sprint(n)
}
