package diffdisk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Rebase changes the backing file of the layer at path to newBase (a path
// from the working directory, of format newBaseFormat as in
// CreateOptions.BackingFormat); newBase "" makes the layer a base.
//
// Safe mode (unsafe false) keeps what the layer shows: the old chain and
// the new one are both opened and verified, and wherever the layer stores
// nothing and the old backing view differs from the new one, the old
// content is copied into the layer (zeros as tombstones); only then is the
// reference rewritten. If it is interrupted before that, the layer still
// reads the same over its old backing file.
//
// Unsafe mode (-u) only rewrites the reference; the old backing file is
// not opened at all (it may be gone: that is what -u is for). The new one
// is opened only to record its identity.
func Rebase(path, newBase, newBaseFormat string, unsafe bool) error {
	return RebaseWith(path, newBase, RebaseOptions{Format: newBaseFormat, Unsafe: unsafe})
}

// RebaseOptions control RebaseWith.
type RebaseOptions struct {
	// Format is the new backing file's format (Rebase's newBaseFormat).
	Format string
	// Unsafe only rewrites the reference (Rebase's unsafe).
	Unsafe bool
	// Progress, when set, is called in safe mode with the bytes of the
	// layer's unstored ranges compared so far and their total.
	Progress func(done, total int64)
	// Endpoint is the store's URL for a new base in an object store
	// (s3://...) when it is not the SDK's default (create's Endpoint).
	Endpoint string
}

// RebaseWith is Rebase with options.
func RebaseWith(path, newBase string, opts RebaseOptions) error {
	newBaseFormat, unsafe := opts.Format, opts.Unsafe
	if err := refuseCycle(path, newBase, newBaseFormat); err != nil {
		return fmt.Errorf("rebase %q: %w", path, err)
	}
	var err error
	if unsafe {
		err = rebaseUnsafe(path, newBase, opts)
	} else {
		err = rebaseSafe(path, newBase, opts)
	}
	if err != nil {
		return fmt.Errorf("rebase %q: %w", path, err)
	}
	return nil
}

// refuseCycle refuses a new backing file whose own chain reaches the
// layer at path (or is the layer itself): the chain would loop.
func refuseCycle(path, newBase, format string) error {
	if newBase == "" || (format != "" && format != disklayer.FormatHibdisk) || isStoreURL(newBase) {
		return nil // a raw backing file has no parent; a pushed chain cannot hold a local layer
	}
	self, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st, err := os.Stat(newBase); err == nil && os.SameFile(self, st) {
		return fmt.Errorf("backing file %q is the layer itself: %w", newBase, disklayer.ErrInvalid)
	}
	if loop := chainLoop(newBase, self); loop != "" {
		return fmt.Errorf("backing file %q has %q in its own chain (%s), so the chain would loop: %w", newBase, path, loop, disklayer.ErrInvalid)
	}
	return nil
}

// chainLoop follows the hibdisk parent references from the layer at
// start, opening each layer read-only, and describes the loop it finds
// ("a.db -> b.db -> a.db"): a reference back to a layer already passed,
// or to extra. It returns "" for a chain that ends, or that it cannot
// follow (what opening the chain reports).
func chainLoop(start string, extra os.FileInfo) string {
	var seen []os.FileInfo
	if extra != nil {
		seen = append(seen, extra)
	}
	var names []string
	for next := start; len(names) <= maxChainDepth; {
		st, err := os.Stat(next)
		if err != nil {
			return ""
		}
		names = append(names, next)
		for _, s := range seen {
			if os.SameFile(s, st) {
				return strings.Join(names, " -> ")
			}
		}
		seen = append(seen, st)
		if ok, err := sqlitelayer.IsLayer(next); err != nil || !ok {
			return ""
		}
		f, err := sqlitelayer.Open(next, sqlitelayer.OpenOptions{ReadOnly: true})
		if err != nil {
			return ""
		}
		ref := f.Info().Parent
		f.Close()
		if ref == nil || ref.Format != disklayer.FormatHibdisk {
			return ""
		}
		next = ref.ResolvePath(next)
	}
	return fmt.Sprintf("deeper than %d layers", maxChainDepth)
}

// maxChainDepth bounds the walk of refuseCycle.
const maxChainDepth = 4096

// openNewBase opens the backing file a rebase moves path onto, and the
// reference path will record: a file beside it, or a chain pushed to an
// object store (pinned to the manifest its tag names now, as create -b
// pins it).
func openNewBase(path, newBase string, opts RebaseOptions) (*Disk, *disklayer.ParentRef, error) {
	if isStoreURL(newBase) || isStoreFormat(opts.Format) {
		return attachStoreParent(newBase, opts.Format, opts.Endpoint)
	}
	if opts.Endpoint != "" {
		return nil, nil, fmt.Errorf("an endpoint is for a backing file in an object store (s3://...), not %q: %w", newBase, disklayer.ErrInvalid)
	}
	return openBacking(path, newBase, opts.Format)
}

func rebaseUnsafe(path, newBase string, opts RebaseOptions) (err error) {
	top, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := top.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	var ref *disklayer.ParentRef
	if newBase != "" {
		backing, r, err := openNewBase(path, newBase, opts)
		if err != nil {
			return err
		}
		ref = r
		if err := backing.Close(); err != nil {
			return err
		}
	}
	return top.SetParent(ref)
}

func rebaseSafe(path, newBase string, opts RebaseOptions) (err error) {
	old, err := openChain(path, Options{}, false)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := old.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	var ref *disklayer.ParentRef
	var newView *Disk // nil: the new view is all zeros
	if newBase != "" {
		if newView, ref, err = openNewBase(path, newBase, opts); err != nil {
			return err
		}
		defer func() {
			if cerr := newView.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}()
	}
	top := old.layers[0].(*sqlitelayer.File)
	if err := keepView(old, newView, opts.Progress); err != nil {
		return err
	}
	if err := top.Flush(); err != nil {
		return err
	}
	return top.SetParent(ref)
}

// keepView copies into d's top, wherever the top stores nothing, the
// sectors in which d's view below the top differs from newView (nil:
// zeros), so that the top reads the same over newView. progress, when
// not nil, is told the bytes compared and the total.
func keepView(d *Disk, newView *Disk, progress func(done, total int64)) error {
	ix, err := d.chainIndex()
	if err != nil {
		return err
	}
	var absent []disklayer.Extent
	for e, err := range d.layers[0].Extents(0, d.size) {
		if err != nil {
			return err
		}
		if e.Kind == disklayer.Absent {
			absent = append(absent, e)
		}
	}
	var done, total int64
	for _, e := range absent {
		total += e.Len
	}
	if progress != nil {
		progress(0, total)
	}
	ss := int(d.sectorSize)
	oldBuf, newBuf := make([]byte, copyChunk), make([]byte, copyChunk)
	for _, e := range absent {
		for off := e.Off; off < e.End(); off += copyChunk {
			n := min(copyChunk, e.End()-off)
			if progress != nil {
				if done > 0 {
					progress(done, total)
				}
				done += n
			}
			oldP, newP := oldBuf[:n], newBuf[:n]
			if err := d.readFrom(ix, 1, oldP, off); err != nil {
				return err
			}
			if err := readClipped(newView, newP, off); err != nil {
				return err
			}
			if bytes.Equal(oldP, newP) {
				continue
			}
			// Write the runs of differing sectors.
			for i := 0; i < len(oldP); {
				if bytes.Equal(oldP[i:i+ss], newP[i:i+ss]) {
					i += ss
					continue
				}
				j := i + ss
				for j < len(oldP) && !bytes.Equal(oldP[j:j+ss], newP[j:j+ss]) {
					j += ss
				}
				if _, err := d.top.WriteAt(oldP[i:j], off+int64(i)); err != nil {
					return err
				}
				i = j
			}
		}
	}
	if progress != nil {
		progress(total, total)
	}
	return nil
}

// readClipped reads v's view at off, with zeros past its end (and
// everywhere when v is nil).
func readClipped(v *Disk, p []byte, off int64) error {
	if v == nil || off >= v.size {
		clear(p)
		return nil
	}
	n := min(int64(len(p)), v.size-off)
	clear(p[n:])
	_, err := v.ReadAt(p[:n], off)
	return err
}
