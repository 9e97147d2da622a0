package diffdisk

import (
	"fmt"
	"os"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
)

// ConvertOptions describe the output of Convert.
type ConvertOptions struct {
	// Format of the output: disklayer.FormatHibdisk (the default) or
	// disklayer.FormatRaw.
	Format string
	// SectorSize of a hibdisk output; 0 means the largest power of two
	// up to disklayer.DefaultSectorSize that divides the source size.
	SectorSize int
	// Label of a hibdisk output.
	Label string
	// Progress, when set, is called with the bytes of the source done so
	// far and its size, after each chunk.
	Progress func(done, total int64)
}

// Convert copies the whole view of src into a new standalone image at dst
// (`hibdisk convert`), keeping it sparse: ranges src reports as Absent or
// Zero are not read, and all-zero sectors inside data ranges are not
// stored (no row in a hibdisk output, a hole in a raw one). dst must not
// exist; on failure the partial output is removed.
func Convert(src disklayer.Layer, dst string, opts ConvertOptions) (err error) {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("convert to %q: %w", dst, os.ErrExist)
	}
	out, err := createOutput(src, dst, opts)
	if err != nil {
		return fmt.Errorf("convert to %q: %w", dst, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("convert to %q: %w", dst, cerr)
		}
		if err != nil {
			removeLayerFiles(dst)
		}
	}()
	if err := copyView(out, src, opts.Progress); err != nil {
		return fmt.Errorf("convert to %q: %w", dst, err)
	}
	return nil
}

func createOutput(src disklayer.Layer, dst string, opts ConvertOptions) (disklayer.Disk, error) {
	size := src.Size()
	switch opts.Format {
	case "", disklayer.FormatHibdisk:
		ss := opts.SectorSize
		if ss == 0 {
			ss = rawDiffSectorSize(size)
		}
		if size%int64(ss) != 0 {
			return nil, fmt.Errorf("source size %d is not a multiple of sector size %d: %w", size, ss, disklayer.ErrInvalid)
		}
		return disklayer.Create(dst, disklayer.CreateOptions{Size: size, SectorSize: ss, Label: opts.Label})
	case disklayer.FormatRaw:
		return rawlayer.Create(dst, size)
	}
	return nil, fmt.Errorf("output format %q (want %s or %s): %w", opts.Format, disklayer.FormatHibdisk, disklayer.FormatRaw, disklayer.ErrInvalid)
}

// copyView writes every non-zero sector-aligned run of src's view into
// dst, which reads as zeros everywhere to begin with.
func copyView(dst disklayer.Disk, src disklayer.Layer, progress func(done, total int64)) error {
	size := src.Size()
	buf := make([]byte, copyChunk)
	// Zero detection works on the output's sectors, so a sector that is
	// partly data and partly zero is stored whole.
	unit := int64(dst.SectorSize())
	for e, err := range src.Extents(0, size) {
		if err != nil {
			return err
		}
		if e.Kind == disklayer.Data {
			for off := e.Off; off < e.End(); {
				n := min(int64(len(buf)), e.End()-off)
				p := buf[:n]
				if _, err := src.ReadAt(p, off); err != nil {
					return err
				}
				if err := writeNonZero(dst, p, off, unit); err != nil {
					return err
				}
				off += n
				if progress != nil {
					progress(off, size)
				}
			}
		} else if progress != nil {
			progress(e.End(), size)
		}
	}
	return dst.Flush()
}

// writeNonZero writes the runs of p (at off) that are not all-zero
// units, skipping the zero ones, which dst already reads as zeros.
func writeNonZero(dst disklayer.Disk, p []byte, off, unit int64) error {
	start := -1
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		_, err := dst.WriteAt(p[start:end], off+int64(start))
		start = -1
		return err
	}
	for i := 0; i < len(p); {
		// The first unit may be partial when off is not aligned.
		n := int(unit - (off+int64(i))%unit)
		n = min(n, len(p)-i)
		if firstNonZero(p[i:i+n]) < 0 {
			if err := flush(i); err != nil {
				return err
			}
		} else if start < 0 {
			start = i
		}
		i += n
	}
	return flush(len(p))
}

// removeLayerFiles deletes a partial output and its SQLite companions.
func removeLayerFiles(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm", path + "-journal"} {
		_ = os.Remove(p) // best effort: the original error is what matters
	}
}
