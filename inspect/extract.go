package inspect

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Extract copies the file or directory tree at p to dest on the host,
// which must not exist yet. Permission bits and modification times are
// kept (directories' times are set after their contents are written);
// symbolic links are recreated as links; device nodes, FIFOs and sockets
// are skipped and returned in skipped. Ownership is not changed.
func (f *FS) Extract(p, dest string) (skipped []string, err error) {
	if _, err := os.Lstat(dest); err == nil {
		return nil, fmt.Errorf("extract to %s: %w", dest, os.ErrExist)
	}
	top, err := f.Stat(p)
	if err != nil {
		return nil, err
	}
	var dirs []Entry // set their times last, deepest first
	var dirDests []string
	err = f.walk(top, func(e Entry) error {
		rel := strings.TrimPrefix(strings.TrimPrefix(e.Path, top.Path), "/")
		target := filepath.Join(dest, filepath.FromSlash(rel))
		switch {
		case e.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return fmt.Errorf("extract %s: %w", e.Path, err)
			}
			dirs, dirDests = append(dirs, e), append(dirDests, target)
			return nil
		case e.Mode.IsRegular():
			return f.extractFile(e, target)
		case e.Mode.Type() == os.ModeSymlink:
			if e.Link == "" {
				skipped = append(skipped, e.Path)
				return nil
			}
			if err := os.Symlink(e.Link, target); err != nil {
				return fmt.Errorf("extract %s: %w", e.Path, err)
			}
			return nil
		default:
			skipped = append(skipped, e.Path)
			return nil
		}
	})
	if err != nil {
		return skipped, err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := applyMeta(dirDests[i], dirs[i]); err != nil {
			return skipped, err
		}
	}
	return skipped, nil
}

func (f *FS) extractFile(e Entry, target string) (err error) {
	r, err := f.openEntry(e)
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("extract %s: %w", e.Path, err)
	}
	defer func() {
		if cerr := w.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("extract %s: %w", e.Path, cerr)
		}
	}()
	if _, err := io.Copy(w, r); err != nil {
		return fmt.Errorf("extract %s: %w", e.Path, err)
	}
	return applyMeta(target, e)
}

// applyMeta sets the permission bits (with setuid, setgid and sticky)
// and the modification time.
func applyMeta(target string, e Entry) error {
	mode := e.Mode.Perm() | e.Mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)
	if err := os.Chmod(target, mode); err != nil {
		return fmt.Errorf("extract %s: %w", e.Path, err)
	}
	if !e.ModTime.IsZero() {
		if err := os.Chtimes(target, e.ModTime, e.ModTime); err != nil {
			return fmt.Errorf("extract %s: %w", e.Path, err)
		}
	}
	return nil
}
