package diffdisk

import (
	"errors"
	"fmt"
	"os"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// copyChunk is the unit of bulk copies and comparisons.
const copyChunk = 1 << 20

// Commit folds the diff layer at path into its parent (`hibdisk commit`).
// The chain is verified first.
//
//   - A hibdisk parent absorbs the layer's rows (disk sectors and
//     hibernate blocks) in one transaction (sqlitelayer.File.Absorb): it
//     commits completely or not at all.
//   - A raw parent gets the layer's data written into it and its
//     tombstones zeroed; then the layer's recorded size and digest of the
//     parent are updated, because the parent's content changed. The
//     layer's hibernate blocks stay in the layer (a raw file has nowhere
//     to keep them). This is not atomic: if it is interrupted, the layer
//     still holds everything it held, so its view is intact, but its
//     recorded digest no longer matches; `Rebase(path, parent, "raw",
//     true)` re-records the parent, after which Commit can be run again.
//
// A parent smaller than the layer grows to the layer's size (as
// qemu-img commit does). Then the layer is emptied (its disk rows, and
// its hibernate blocks when they went into a hibdisk parent), as
// qemu-img commit empties the top: its view is unchanged, because the
// parent now holds what it held. With opts.Keep the rows stay (qemu-img
// commit -d); an interrupted commit leaves them too, which is just as
// valid. Other layers built on the
// parent see the committed data: for a hibdisk parent nothing detects
// that (its uuid is unchanged, as with qcow2), for a raw parent their
// recorded digest no longer matches and Open refuses them.
func Commit(path string, opts CommitOptions) error {
	if err := commit(path, opts); err != nil {
		return fmt.Errorf("commit %q: %w", path, err)
	}
	return nil
}

// CommitOptions control Commit.
type CommitOptions struct {
	// Keep leaves the committed layer's rows in place instead of
	// emptying it (qemu-img commit -d).
	Keep bool
	// Progress, when set, is called with the bytes of the layer's own
	// rows written into a raw backing file so far and their total; into
	// a hibdisk backing file, which takes them in one transaction, with
	// 0 of 1 before and 1 of 1 after.
	Progress func(done, total int64)
}

func commit(path string, opts CommitOptions) (err error) {
	d, err := openChain(path, Options{}, true)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := d.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if len(d.layers) < 2 {
		return fmt.Errorf("%q has no backing file to commit into: %w", path, disklayer.ErrInvalid)
	}
	top := d.layers[0].(*sqlitelayer.File)
	if err := top.Flush(); err != nil {
		return err
	}
	ref := *top.Info().Parent
	switch parent := d.layers[1].(type) {
	case *sqlitelayer.File:
		// Absorb is one SQL statement per table inside one transaction:
		// progress can only say when it starts and ends.
		if opts.Progress != nil {
			opts.Progress(0, 1)
		}
		if err := parent.Absorb(top); err != nil {
			return err
		}
		if opts.Progress != nil {
			opts.Progress(1, 1)
		}
		// Absorb recorded the parent's new size and generation in top.
		if err := parent.Flush(); err != nil {
			return err
		}
		if opts.Keep {
			return nil
		}
		if err := top.Empty(); err != nil {
			return err
		}
		return top.Compact() // the emptied layer gives its space back
	case disklayer.Disk:
		parentPath := d.meta[1].path
		if top.Size() > parent.Size() {
			// A raw file grows by truncation; reopen it to see the size.
			if err := parent.Close(); err != nil {
				return err
			}
			d.layers[1] = nil
			if err := os.Truncate(parentPath, top.Size()); err != nil {
				return fmt.Errorf("grow backing file: %w", err)
			}
			grown, err := rawlayer.Open(parentPath, false)
			if err != nil {
				return err
			}
			d.layers[1] = grown
			parent = grown
		}
		if err := copyOwn(parent, top, opts.Progress); err != nil {
			return fmt.Errorf("write into backing file %q: %w", parentPath, err)
		}
		if err := parent.Flush(); err != nil {
			return err
		}
		id, err := rawlayer.Identify(parentPath)
		if err != nil {
			return err
		}
		ref.Size, ref.Digest, ref.SHA256, ref.Stat = id.Size, id.Digest, id.SHA256, id.Stat
		if err := top.SetParent(&ref); err != nil {
			return err
		}
		if opts.Keep {
			return nil
		}
		// The hibernate blocks stay: a raw file has nowhere to keep them.
		if err := top.EmptyDisk(); err != nil {
			return err
		}
		return top.Compact()
	}
	return fmt.Errorf("backing file %q is a %s base, which hibdisk only reads; commit writes into hibdisk layers and raw images (`hibdisk convert %s MERGED` makes a standalone copy of the whole view instead): %w",
		d.meta[1].path, d.meta[1].format, d.meta[0].path, disklayer.ErrInvalid)
}

// copyOwn writes src's own rows into dst: its data as data, its
// tombstones as zeros. Absent ranges are left alone. progress, when not
// nil, is told the bytes done and the total.
func copyOwn(dst disklayer.Disk, src disklayer.Layer, progress func(done, total int64)) error {
	var own []disklayer.Extent
	for e, err := range src.Extents(0, src.Size()) {
		if err != nil {
			return err
		}
		if e.Kind != disklayer.Absent {
			own = append(own, e)
		}
	}
	var done, total int64
	for _, e := range own {
		total += e.Len
	}
	report := func(n int64) {
		done += n
		if progress != nil {
			progress(done, total)
		}
	}
	report(0)
	buf := make([]byte, copyChunk)
	for _, e := range own {
		if e.Kind == disklayer.Zero {
			if err := dst.Zero(e.Off, e.Len); err != nil {
				return err
			}
			report(e.Len)
			continue
		}
		for off := e.Off; off < e.End(); off += copyChunk {
			p := buf[:min(copyChunk, e.End()-off)]
			if _, err := src.ReadAt(p, off); err != nil {
				return err
			}
			if _, err := dst.WriteAt(p, off); err != nil {
				return err
			}
			report(int64(len(p)))
		}
	}
	return nil
}
