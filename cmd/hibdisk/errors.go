package main

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
)

// explain is the one line a failed command prints: for the errors a user
// can fix, what happened and what to type, in the command's own flags
// rather than the library's words; otherwise the error itself.
func explain(cmd string, err error) string {
	var missing *diffdisk.MissingParentError
	var format *diffdisk.FormatNeededError
	var size *disklayer.SizeError
	switch {
	case errors.As(err, &missing):
		f := ""
		if missing.Ref.Format != disklayer.FormatHibdisk {
			f = " -F " + missing.Ref.Format
		}
		return fmt.Sprintf("parent %q of %q is missing (no file %q); if it moved, record where it is now: hibdisk rebase -u -b NEWPATH%s %s",
			missing.Ref.Path, missing.Child, missing.Path, f, missing.Child)
	case errors.As(err, &format):
		if format.Detected == disklayer.FormatRaw {
			return fmt.Sprintf("base %q is not a hibdisk layer; if it is a raw image, add -F raw", format.Backing)
		}
		return fmt.Sprintf("base %q looks like a %s image; add -F %s (a backing file's format is never guessed)", format.Backing, format.Detected, format.Detected)
	case errors.As(err, &size) && (cmd == "create" || cmd == "resize"):
		return explainSize(cmd, size)
	}
	if msg := explainRemote(err); msg != "" {
		return msg
	}
	// A file that is not there, or is in the way: the file's name and
	// what to do, not the chain of layers the error came through.
	var pe *fs.PathError
	// Only when nothing was said after the file's error (check adds
	// what an interrupted convert left, say).
	if errors.As(err, &pe) && !strings.Contains(pe.Path, "://") && strings.HasSuffix(err.Error(), pe.Error()) {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return fmt.Sprintf("%s: no such file or directory (check the name and the directory)", pe.Path)
		case errors.Is(err, fs.ErrExist) && (cmd == "create" || cmd == "convert"):
			return fmt.Sprintf("%s exists: choose another name, or remove it first", pe.Path)
		case errors.Is(err, fs.ErrPermission):
			return fmt.Sprintf("%s: permission denied (%s)", pe.Path, pe.Op)
		}
	}
	return oneLine(err.Error())
}

// explainSize names the sizes that would do: the size rounded up to the
// sector size, and for create a smaller sector size that divides it.
func explainSize(cmd string, e *disklayer.SizeError) string {
	if e.Size < 0 || e.Size > 1<<60 {
		return fmt.Sprintf("size %d is out of range: a disk is 0 to 2^60 bytes", e.Size)
	}
	ss := int64(e.SectorSize)
	up := (e.Size + ss - 1) / ss * ss
	what := fmt.Sprintf("size %d is not a multiple of the %d-byte sector size", e.Size, ss)
	if cmd == "resize" {
		return fmt.Sprintf("%s of the layer; round it up: %d", what, up)
	}
	// The largest smaller sector size that divides the size, if any.
	for small := ss / 2; small >= disklayer.MinSectorSize; small /= 2 {
		if e.Size%small == 0 {
			return fmt.Sprintf("%s; add --sector-size %d, or round it up: -s %d", what, small, up)
		}
	}
	const min = disklayer.MinSectorSize
	return fmt.Sprintf("%s; round it up: -s %d, or --sector-size %d -s %d", what, up, min, (e.Size+min-1)/min*min)
}
