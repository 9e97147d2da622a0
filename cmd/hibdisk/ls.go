package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"

	"github.com/hibdisk/hibdisk/inspect"
)

func init() {
	register(command{name: "ls", summary: "list files in an image's filesystem (no VM needed)", run: runLs})
}

// runLs lists PATH like ls(1); with -R it lists every path below PATH,
// one full path a line, like virt-ls -R.
func runLs(_ context.Context, e *env, args []string) error {
	fl := newFlags(e, "ls", "[-l] [-R] IMAGE[:PART] PATH")
	long := fl.Bool("l", false, "long format: mode, uid, gid, size, mtime (UTC), name")
	recursive := fl.Bool("R", false, "list everything below PATH, one full path a line")
	pos, err := parseArgs(fl, args, 2, 2)
	if err != nil {
		return err
	}
	fsys, closeImage, err := openFS(e, "ls", pos[0])
	if err != nil {
		return err
	}
	defer closeImage()
	top, err := fsys.Stat(pos[1])
	if err != nil {
		return err
	}
	w := bufio.NewWriter(e.stdout)
	defer w.Flush()
	if *recursive {
		err := fsys.Walk(top.Path, func(ent inspect.Entry) error {
			if ent.Path == top.Path && top.IsDir() {
				return nil
			}
			printEntry(w, ent, ent.Path, *long)
			return nil
		})
		if err != nil {
			return err
		}
		return w.Flush()
	}
	if !top.IsDir() {
		printEntry(w, top, top.Name, *long)
		return w.Flush()
	}
	entries, err := fsys.ReadDir(top.Path)
	if err != nil {
		return err
	}
	for _, ent := range entries {
		printEntry(w, ent, ent.Name, *long)
	}
	return w.Flush()
}

// printEntry prints one line: the name, or with long the ls -l fields
// (owner "-" where the filesystem has none; symlinks with their target).
func printEntry(w io.Writer, ent inspect.Entry, name string, long bool) {
	if !long {
		fmt.Fprintln(w, name)
		return
	}
	uid, gid := "-", "-"
	if ent.HasOwner {
		uid, gid = fmt.Sprint(ent.UID), fmt.Sprint(ent.GID)
	}
	if ent.Mode.Type() == fs.ModeSymlink && ent.Link != "" {
		name += " -> " + ent.Link
	}
	fmt.Fprintf(w, "%s %5s %5s %10d %s %s\n", lsMode(ent.Mode), uid, gid, ent.Size, ent.ModTime.UTC().Format("2006-01-02 15:04:05"), name)
}

// lsMode formats a mode the way ls -l does ("drwxr-sr-t", "lrwxrwxrwx"),
// not the way fs.FileMode.String does ("dgrwxr-xr-t", "Lrwxrwxrwx").
func lsMode(m fs.FileMode) string {
	b := []byte("?rwxrwxrwx")
	switch {
	case m.IsDir():
		b[0] = 'd'
	case m&fs.ModeSymlink != 0:
		b[0] = 'l'
	case m&fs.ModeCharDevice != 0:
		b[0] = 'c'
	case m&fs.ModeDevice != 0:
		b[0] = 'b'
	case m&fs.ModeNamedPipe != 0:
		b[0] = 'p'
	case m&fs.ModeSocket != 0:
		b[0] = 's'
	default:
		b[0] = '-'
	}
	for i := range 9 {
		if m&(1<<(8-i)) == 0 {
			b[i+1] = '-'
		}
	}
	special := func(bit fs.FileMode, at int, set, setNoExec byte) {
		if m&bit == 0 {
			return
		}
		if b[at] == '-' {
			b[at] = setNoExec
		} else {
			b[at] = set
		}
	}
	special(fs.ModeSetuid, 3, 's', 'S')
	special(fs.ModeSetgid, 6, 's', 'S')
	special(fs.ModeSticky, 9, 't', 'T')
	return string(b)
}
