package diffdisk

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Open opens the chain whose top layer is the hibdisk file at path,
// following parent references down to the base. The top is opened
// writable unless opts.ReadOnly; every lower layer is opened read-only.
// Each parent's identity is verified against what its child recorded
// (hibdisk: uuid and size; raw: size and rawlayer.Digest); a missing or
// changed parent, or a reference cycle, is an error wrapping
// disklayer.ErrParentMismatch that names what was recorded and what was
// found.
func Open(path string, opts Options) (*Disk, error) {
	d, err := openChain(path, opts, false)
	if err != nil {
		return nil, fmt.Errorf("open chain %q: %w", path, err)
	}
	return d, nil
}

// OpenImage opens the input of a read-only command: a hibdisk layer
// (recognised by its header, sqlitelayer.IsLayer) as its whole chain,
// an OpenVMM disklayer_sqlite file as its one layer, anything else as a
// raw image. The Disk is read-only.
func OpenImage(path string) (*Disk, error) {
	return openImage(path, false)
}

// OpenImageStable is OpenImage holding the image so that nobody may write
// it while it is open (a read-only export), where OpenImage tolerates a
// writer of the top and reads its committed snapshots.
func OpenImageStable(path string) (*Disk, error) {
	return openImage(path, true)
}

func openImage(path string, stable bool) (*Disk, error) {
	isLayer, err := sqlitelayer.IsLayer(path)
	if err != nil {
		return nil, fmt.Errorf("open image %q: %w", path, err)
	}
	if isLayer {
		return Open(path, Options{ReadOnly: true, HoldStable: stable})
	}
	if d, ok, err := openOpenVMMImage(path); ok || err != nil {
		return d, err
	}
	if err := refuseForeign(path); err != nil {
		return nil, fmt.Errorf("open image %q: %w", path, err)
	}
	var opts []rawlayer.Option
	if stable {
		opts = append(opts, rawlayer.HoldStable())
	}
	raw, err := rawlayer.Open(path, true, opts...)
	if err != nil {
		return nil, fmt.Errorf("open image %q: %w", path, err)
	}
	d, err := compose(Options{ReadOnly: true}, []disklayer.Layer{raw}, []layerMeta{{path: path, format: disklayer.FormatRaw}})
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("open image %q: %w", path, err)
	}
	return d, nil
}

// openChain opens the chain from the hibdisk layer at path. With
// writableParent the layer right below the top is opened writable too
// (Commit writes into it).
func openChain(path string, opts Options, writableParent bool) (d *Disk, err error) {
	var layers []disklayer.Layer
	var metas []layerMeta
	defer func() {
		if err != nil {
			closeLayers(layers)
		}
	}()
	top, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: opts.ReadOnly, Strict: opts.Strict, WriteBack: opts.WriteBack, HoldStable: opts.HoldStable})
	if err != nil {
		return nil, err
	}
	layers = append(layers, top)
	metas = append(metas, layerMeta{path: path, format: disklayer.FormatHibdisk})
	topStat, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	seen := []fs.FileInfo{topStat}

	childPath, ref := path, top.Info().Parent
	for ref != nil {
		writable := writableParent && len(layers) == 1
		parentPath := ref.ResolvePath(childPath)
		link := fmt.Sprintf("parent %q of %q", ref.Path, childPath)
		// A cycle is found before the parent is opened: opening it again
		// would only meet this chain's own lock on it.
		if st, err := os.Stat(parentPath); err == nil {
			for _, s := range seen {
				if os.SameFile(s, st) {
					return nil, fmt.Errorf("%s: %q is already in the chain (a reference cycle): %w", link, parentPath, disklayer.ErrParentMismatch)
				}
			}
		}
		// The top, when writable, records a raw parent's new file
		// identity once its content was verified in full.
		var restat *string
		var newStat string
		if len(layers) == 1 && !opts.ReadOnly {
			restat = &newStat
		}
		l, st, next, err := openParent(link, parentPath, *ref, writable, opts.Strict, restat)
		if err != nil {
			return nil, err
		}
		if newStat != "" {
			r := *ref
			r.Stat = newStat
			if err := top.SetParent(&r); err != nil {
				closeLayers([]disklayer.Layer{l})
				return nil, err
			}
		}
		layers = append(layers, l)
		metas = append(metas, layerMeta{path: parentPath, format: ref.Format})
		seen = append(seen, st)
		childPath, ref = parentPath, next
	}
	return compose(opts, layers, metas)
}

// openParent opens the parent a child recorded as ref, found at path, and
// verifies its identity. It returns the layer, its file info (for cycle
// detection) and the parent's own parent reference.
//
// A raw parent whose file identity changed but whose content matched
// sets *restat (when restat is not nil) to its new identity.
func openParent(link, path string, ref disklayer.ParentRef, writable, strict bool, restat *string) (disklayer.Layer, fs.FileInfo, *disklayer.ParentRef, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil, fmt.Errorf("%s: %s recorded, file %q is missing: %w", link, describeRef(ref), path, disklayer.ErrParentMismatch)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", link, err)
	}
	switch ref.Format {
	case disklayer.FormatHibdisk:
		f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: !writable, Strict: strict, HoldStable: true})
		if errors.Is(err, disklayer.ErrNotLayer) {
			return nil, nil, nil, fmt.Errorf("%s: %s recorded, file is not a hibdisk layer: %w: %w", link, describeRef(ref), disklayer.ErrParentMismatch, err)
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", link, err)
		}
		info := f.Info()
		switch {
		case info.UUID != ref.UUID:
			err = fmt.Errorf("%s: uuid %s recorded, file now has %s: %w", link, ref.UUID, info.UUID, disklayer.ErrParentMismatch)
		case info.DiskSize != ref.Size:
			err = fmt.Errorf("%s: size %d recorded, file now has %d: %w", link, ref.Size, info.DiskSize, disklayer.ErrParentMismatch)
		case ref.Generation != 0 && info.Generation != ref.Generation:
			err = fmt.Errorf("%s: %w", link, generationMoved(ref, info))
		}
		if err != nil {
			f.Close()
			return nil, nil, nil, err
		}
		return f, st, info.Parent, nil
	case disklayer.FormatRaw:
		raw, err := rawlayer.Open(path, !writable, rawlayer.HoldStable())
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", link, err)
		}
		if size := raw.Size(); size != ref.Size {
			raw.Close()
			return nil, nil, nil, fmt.Errorf("%s: size %d recorded, file now has %d: %w", link, ref.Size, size, disklayer.ErrParentMismatch)
		}
		newStat, err := verifyRaw(path, ref)
		if err != nil {
			raw.Close()
			return nil, nil, nil, fmt.Errorf("%s: %w", link, err)
		}
		if newStat != "" && restat != nil {
			*restat = newStat
		}
		return raw, st, nil, nil
	case disklayer.FormatOpenVMM:
		l, err := openOpenVMMParent(link, path, ref, writable, restat)
		return l, st, nil, err
	}
	return nil, nil, nil, fmt.Errorf("%s: unknown parent format %q: %w", link, ref.Format, disklayer.ErrCorrupt)
}

// generationMoved is the error for a hibdisk parent changed after its
// child recorded it.
func generationMoved(ref disklayer.ParentRef, info sqlitelayer.Info) error {
	return fmt.Errorf("generation %d recorded, layer %s is now at generation %d: its content changed after this layer was made over it (a writable serve, vm run, commit, or an SQL client wrote it); this layer's view would silently mix in the change. If the change is intended, `hibdisk rebase -u -b PARENT LAYER` accepts it: %w",
		ref.Generation, info.UUID, info.Generation, disklayer.ErrParentMismatch)
}

// verifyRaw checks a raw parent against what its child recorded: size
// and sampled digest always (a few MiB read); then, when the file's
// identity (inode, size, times) differs from the one recorded, its whole
// content (one read of its data). When the identity changed (a copy, a
// move, a touch) and the content matched, it returns the new identity,
// which the caller may record to spare the next open the full read.
func verifyRaw(path string, ref disklayer.ParentRef) (newStat string, err error) {
	digest, err := rawlayer.Digest(path)
	if err != nil {
		return "", err
	}
	if digest != ref.Digest {
		return "", fmt.Errorf("digest %s recorded, file now has %s: %w", ref.Digest, digest, disklayer.ErrParentMismatch)
	}
	if ref.Stat == "" || ref.SHA256 == "" {
		return "", nil // recorded before schema version 5: samples only
	}
	stat, err := rawlayer.FileStat(path)
	if err != nil {
		return "", err
	}
	if stat == ref.Stat {
		return "", nil
	}
	sum, _, err := rawlayer.ContentDigest(path)
	if err != nil {
		return "", err
	}
	if sum != ref.SHA256 {
		return "", fmt.Errorf("content %s recorded, file now has %s (file was %s, is now %s): the raw image changed after this layer was made over it; if the change is intended, `hibdisk rebase -u -b IMAGE -F raw LAYER` accepts it: %w",
			ref.SHA256, sum, ref.Stat, stat, disklayer.ErrParentMismatch)
	}
	return stat, nil
}

// describeRef names the identity a child recorded for its parent.
func describeRef(ref disklayer.ParentRef) string {
	if ref.Format != disklayer.FormatHibdisk {
		return fmt.Sprintf("%s image of %d bytes with digest %s", ref.Format, ref.Size, ref.Digest)
	}
	return fmt.Sprintf("hibdisk layer %s of %d bytes", ref.UUID, ref.Size)
}

// LayerInfo describes one layer of an open chain, for `hibdisk info`.
type LayerInfo struct {
	Depth      int    // 0 is the top
	Path       string // as opened; "" for a layer composed without a file
	Format     string // disklayer.FormatHibdisk, disklayer.FormatRaw, or "" when unknown
	Size       int64
	SectorSize int
	// The rest is known for hibdisk layers only.
	UUID      string
	Label     string
	CreatedAt time.Time
	ReadOnly  bool // the layer's read_only flag
	// Generation counts the layer's content-changing commits (0 for a
	// layer older than schema version 5).
	Generation int64
	Parent     *disklayer.ParentRef // the reference as stored
	Stats      *sqlitelayer.Stats
}

// Layers describes every layer, top first.
func (d *Disk) Layers() ([]LayerInfo, error) {
	if d.closed.Load() {
		return nil, fmt.Errorf("layers of %s: %w", d.name, disklayer.ErrClosed)
	}
	list := make([]LayerInfo, len(d.layers))
	for i, l := range d.layers {
		li := LayerInfo{Depth: i, Path: d.meta[i].path, Format: d.meta[i].format, Size: l.Size(), SectorSize: l.SectorSize()}
		if f, ok := l.(*sqlitelayer.File); ok {
			info := f.Info()
			stats, err := f.Stats()
			if err != nil {
				return nil, fmt.Errorf("layers of %s: %w", d.name, err)
			}
			li.Format = disklayer.FormatHibdisk
			li.UUID, li.Label, li.CreatedAt, li.ReadOnly, li.Parent = info.UUID, info.Label, info.CreatedAt, info.ReadOnly, info.Parent
			li.Generation = info.Generation
			li.Stats = &stats
		}
		list[i] = li
	}
	return list, nil
}

// refuseForeign refuses to read the file at path as raw when its magic
// number says it is an image of another format (rawlayer.Detect): a
// qcow2 read as raw gives a silently wrong answer (compare says it
// differs from the image it came from, convert copies its file bytes).
// A raw image is only ever named raw explicitly (-F raw) or found to match
// no known format.
func refuseForeign(path string) error {
	format, err := rawlayer.Detect(path)
	if err != nil || format == "" {
		return err
	}
	switch format {
	case rawlayer.FormatSQLite:
		return fmt.Errorf("%q is an SQLite database but not a hibdisk layer (no hibdisk application_id), not a raw image: %w", path, disklayer.ErrForeignFormat)
	case rawlayer.FormatOpenVMM:
		return fmt.Errorf("%q is an OpenVMM disklayer_sqlite file, not a raw image; as a backing file, name it with -F %s: %w", path, disklayer.FormatOpenVMM, disklayer.ErrForeignFormat)
	}
	return fmt.Errorf("%q is a %s image (found by its magic number), not raw; hibdisk does not read %s yet: convert it first (qemu-img convert -O raw %s IMAGE.img): %w",
		path, format, format, path, disklayer.ErrForeignFormat)
}
