package diffdisk

import (
	"errors"
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// ResizeOptions control Resize.
type ResizeOptions struct {
	// Shrink allows a smaller size (qemu-img resize --shrink). Without it
	// shrinking is refused, since it discards the data past the new end.
	Shrink bool
}

// Resize changes the size of the hibdisk layer at path (`hibdisk
// resize`), without touching its backing chain.
//
// Growing is always safe: the new part reads as zeros, even where the
// backing file is larger (the layer writes tombstones over the part of its
// parent that was hidden past the old end, so that data does not
// reappear). Shrinking needs opts.Shrink and drops the layer's rows past
// the new end; a diff layer may shrink below its parent's size, and then
// reads only the first size bytes of the parent.
func Resize(path string, size int64, opts ResizeOptions) error {
	if err := resize(path, size, opts); err != nil {
		return fmt.Errorf("resize %q to %d bytes: %w", path, size, err)
	}
	return nil
}

func resize(path string, size int64, opts ResizeOptions) (err error) {
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	if old := f.Size(); size < old && !opts.Shrink {
		return fmt.Errorf("shrinking from %d bytes discards the data past the new end; allow it with --shrink: %w", old, disklayer.ErrInvalid)
	}
	return f.Resize(size)
}
