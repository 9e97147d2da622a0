package diffdisk

import (
	"fmt"
	"path/filepath"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// CreateOptions describe a new layer (`hibdisk create`).
type CreateOptions struct {
	// Size in bytes. 0 for a diff layer means the backing file's size; a
	// diff layer may be larger than its backing file, never smaller. A
	// base layer needs a size.
	Size int64
	// SectorSize: 0 means the backing layer's sector size over a hibdisk
	// layer, the largest power of two up to disklayer.DefaultSectorSize
	// that divides the size over a raw image, and
	// disklayer.DefaultSectorSize for a base layer.
	SectorSize int
	// Backing names the parent as a path from the working directory;
	// "" creates a base layer. The layer records it relative to its own
	// directory.
	Backing string
	// BackingFormat is "hibdisk", "raw", "openvmm" or "". "" is accepted
	// only when the backing file is a hibdisk layer: a raw backing file
	// must be named as such ("-F raw"), it is never guessed, and so must
	// an OpenVMM file ("-F openvmm").
	BackingFormat string
	Label         string
}

// Create makes a new hibdisk layer at path: a base layer, or a diff layer
// over opts.Backing whose chain is opened and verified first (a layer is
// never created over a broken chain).
func Create(path string, opts CreateOptions) error {
	if err := create(path, opts); err != nil {
		return fmt.Errorf("create %q: %w", path, err)
	}
	return nil
}

func create(path string, opts CreateOptions) error {
	if opts.Backing == "" {
		if opts.BackingFormat != "" {
			return fmt.Errorf("backing format %q without a backing file: %w", opts.BackingFormat, disklayer.ErrInvalid)
		}
		if opts.Size <= 0 {
			return fmt.Errorf("a base layer needs a size: %w", disklayer.ErrInvalid)
		}
		f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: opts.Size, SectorSize: opts.SectorSize, Label: opts.Label})
		if err != nil {
			return err
		}
		return f.Close()
	}
	backing, ref, err := openBacking(path, opts.Backing, opts.BackingFormat)
	if err != nil {
		return err
	}
	defer backing.Close()
	size, sectorSize := opts.Size, opts.SectorSize
	if size == 0 {
		size = backing.Size()
	}
	if size < backing.Size() {
		return fmt.Errorf("size %d is smaller than backing file %q (%d bytes): %w", size, opts.Backing, backing.Size(), disklayer.ErrInvalid)
	}
	if sectorSize == 0 {
		sectorSize = backing.SectorSize()
		if ref.Format == disklayer.FormatRaw || ref.Format == disklayer.FormatOpenVMM {
			sectorSize = rawDiffSectorSize(size)
		}
	}
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: size, SectorSize: sectorSize, Parent: ref, Label: opts.Label})
	if err != nil {
		return err
	}
	return f.Close()
}

// rawDiffSectorSize picks the sector size of a diff layer of size bytes
// over a raw image. A raw file's 512-byte sectors are only QEMU's
// addressing unit, and 512-byte rows cost a SQLite layer eight times the
// rows of 4 KiB ones, so the diff takes the largest size up to
// disklayer.DefaultSectorSize that divides its size.
func rawDiffSectorSize(size int64) int {
	ss := disklayer.DefaultSectorSize
	for ss > disklayer.MinSectorSize && size%int64(ss) != 0 {
		ss /= 2
	}
	return ss
}

// backingFormat decides the format of a backing file. A file that is not
// a hibdisk layer is raw only when the caller says so.
func backingFormat(backing, format string) (string, error) {
	isLayer, err := sqlitelayer.IsLayer(backing)
	if err != nil {
		return "", fmt.Errorf("backing file: %w", err)
	}
	switch format {
	case "":
		if !isLayer {
			if err := refuseForeign(backing); err != nil {
				return "", fmt.Errorf("backing file: %w", err)
			}
			return "", fmt.Errorf("backing file %q is not a hibdisk layer; if it is a raw image, say so with -F raw (BackingFormat %q): %w", backing, disklayer.FormatRaw, disklayer.ErrNotLayer)
		}
		return disklayer.FormatHibdisk, nil
	case disklayer.FormatHibdisk:
		if !isLayer {
			return "", fmt.Errorf("backing file %q given as %s is not a hibdisk layer: %w", backing, format, disklayer.ErrNotLayer)
		}
		return format, nil
	case disklayer.FormatRaw:
		return format, nil
	case disklayer.FormatOpenVMM:
		return format, requireOpenVMM(backing)
	}
	return "", fmt.Errorf("backing format %q is neither %q nor %q: %w", format, disklayer.FormatHibdisk, disklayer.FormatRaw, disklayer.ErrInvalid)
}

// openBacking opens the backing file named from the working directory as
// a read-only chain (verifying it) and returns the reference a child at
// childPath records for it.
func openBacking(childPath, backing, format string) (*Disk, *disklayer.ParentRef, error) {
	format, err := backingFormat(backing, format)
	if err != nil {
		return nil, nil, err
	}
	rel, err := relativeTo(childPath, backing)
	if err != nil {
		return nil, nil, err
	}
	ref := &disklayer.ParentRef{Path: rel, Format: format}
	if format == disklayer.FormatOpenVMM {
		return openOpenVMMBacking(backing, ref)
	}
	if format == disklayer.FormatRaw {
		// Held stable while its identity is taken: nobody may write it
		// between the digest and the child's creation.
		raw, err := rawlayer.Open(backing, true, rawlayer.HoldStable())
		if err != nil {
			return nil, nil, fmt.Errorf("backing file: %w", err)
		}
		id, err := rawlayer.Identify(backing)
		if err != nil {
			raw.Close()
			return nil, nil, fmt.Errorf("backing file: %w", err)
		}
		if id.Size != raw.Size() {
			raw.Close()
			return nil, nil, fmt.Errorf("backing file %q changed size while it was read: %w", backing, disklayer.ErrParentMismatch)
		}
		ref.Size, ref.Digest, ref.SHA256, ref.Stat = id.Size, id.Digest, id.SHA256, id.Stat
		d, err := compose(Options{ReadOnly: true}, []disklayer.Layer{raw}, []layerMeta{{path: backing, format: format}})
		if err != nil {
			raw.Close()
			return nil, nil, err
		}
		return d, ref, nil
	}
	d, err := openChain(backing, Options{ReadOnly: true, HoldStable: true}, false)
	if err != nil {
		return nil, nil, fmt.Errorf("backing file %q: %w", backing, err)
	}
	info := d.layers[0].(*sqlitelayer.File).Info()
	ref.UUID, ref.Generation = info.UUID, info.Generation
	ref.Size = d.Size()
	return d, ref, nil
}

// relativeTo expresses target (a path from the working directory) as a
// path from the directory of child, which is how layers store parents.
func relativeTo(child, target string) (string, error) {
	childDir, err := filepath.Abs(filepath.Dir(child))
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(target)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(childDir, abs)
	if err != nil {
		// No relative path between them (another volume): keep it absolute.
		return abs, nil
	}
	return rel, nil
}
