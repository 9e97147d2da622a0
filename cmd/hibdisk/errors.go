package main

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"syscall"

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
	var changed *diffdisk.ParentError
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
	case errors.As(err, &changed) && errors.Is(changed.Err, disklayer.ErrParentMismatch):
		f := ""
		if changed.Ref.Format != disklayer.FormatHibdisk {
			f = " -F " + changed.Ref.Format
		}
		return fmt.Sprintf("parent %s of %s is not the image %s was made over (%s); a changed base is never mixed in: put the original back, or if the change is intended accept it: hibdisk rebase -u -b %s%s %s",
			changed.Path, changed.Child, changed.Child, withoutHint(cause(changed.Err, disklayer.ErrParentMismatch, changed.Path)), shellArg(changed.Ref.Path), f, shellArg(changed.Child))
	case errors.As(err, &size) && (cmd == "create" || cmd == "resize"):
		return explainSize(cmd, size)
	}
	// An error that says it all (who holds a layer, say) is printed
	// without the operations it came through.
	var whole standalone
	if errors.As(err, &whole) && whole.Standalone() {
		return oneLine(whole.Error())
	}
	var fe *disklayer.FileError
	if errors.As(err, &fe) {
		if s := explainFile(cmd, fe); s != "" {
			return s
		}
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
		case errors.Is(err, fs.ErrExist) && cmd == "convert":
			return fmt.Sprintf("%s exists: choose another name, remove it first, or add -n to write into it", pe.Path)
		case errors.Is(err, fs.ErrExist) && cmd == "create":
			return fmt.Sprintf("%s exists: choose another name, or remove it first", pe.Path)
		case errors.Is(err, fs.ErrPermission):
			return fmt.Sprintf("%s: permission denied (%s)", pe.Path, pe.Op)
		case errors.Is(err, syscall.EISDIR):
			return fmt.Sprintf("%s is a directory: name an image file", pe.Path)
		}
	}
	return oneLine(err.Error())
}

// standalone is an error whose message names the file, the cause and the
// fix (lock.InUseError): it is printed alone.
type standalone interface {
	error
	Standalone() bool
}

// explainFile is the line for a layer file that cannot be used as it is
// (damaged, not a layer, too new, full): the file at fault, what is
// wrong with it, and what to run; "" when fe's error is none of those.
func explainFile(cmd string, fe *disklayer.FileError) string {
	switch {
	case errors.Is(fe.Err, disklayer.ErrCorrupt):
		if cmd == "check" {
			return ""
		}
		return fmt.Sprintf("%s is damaged (%s); see every problem with: hibdisk check %s", fe.Path, cause(fe.Err, disklayer.ErrCorrupt, fe.Path), shellArg(fe.Path))
	case errors.Is(fe.Err, disklayer.ErrNotLayer):
		return fmt.Sprintf("%s is not a hibdisk layer (%s); hibdisk info %s says what it is", fe.Path, cause(fe.Err, disklayer.ErrNotLayer, fe.Path), shellArg(fe.Path))
	case errors.Is(fe.Err, disklayer.ErrUnsupportedVersion):
		return fmt.Sprintf("%s was written by a newer hibdisk (%s); open it with that version or a later one", fe.Path, cause(fe.Err, disklayer.ErrUnsupportedVersion, fe.Path))
	case errors.Is(fe.Err, disklayer.ErrNoSpace):
		return fmt.Sprintf("%s: no space left on its filesystem; free some and run the command again", fe.Path)
	}
	return ""
}

// cause is err's text without the sentinel it ends in (SQLite's and the
// layer's words for the same thing are said once), and without what it
// said before naming path, which the line names already.
func cause(err, sentinel error, path string) string {
	s := oneLine(err.Error())
	for strings.HasSuffix(s, ": "+sentinel.Error()) {
		s = strings.TrimSuffix(s, ": "+sentinel.Error())
	}
	s = strings.ReplaceAll(s, "sqlite3: ", "")
	if i := strings.LastIndex(s, strconv.Quote(path)+": "); i >= 0 {
		s = s[i+len(strconv.Quote(path))+2:] // the file is named already
	}
	s = strings.TrimPrefix(s, "layer row: ")
	if s == sentinel.Error() {
		return "no detail"
	}
	return s
}

// withoutHint drops the library's own "if the change is intended, ..."
// from a parent mismatch: the line names the command with real names.
func withoutHint(s string) string {
	for _, sep := range []string{"; if the change is intended", ". If the change is intended", " (`hibdisk rebase"} {
		if i := strings.Index(s, sep); i >= 0 {
			s = s[:i]
		}
	}
	return s
}

// shellArg is s as one shell word: itself when nothing in it needs
// quoting.
func shellArg(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@+,%") == "" {
		return s
	}
	return shellQuote(s)
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
