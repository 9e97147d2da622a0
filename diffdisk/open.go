package diffdisk

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/nbdlayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
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
	return OpenImageWith(path, Options{})
}

// ImageFormat is the format OpenImage would read path as: hibdisk for a
// layer, nbd for an NBD URI, openvmm, a format QEMU reads (qcow2, vmdk,
// ...) by its magic number, otherwise raw. A file in a format hibdisk
// cannot read is an error, as OpenImage's.
func ImageFormat(path string) (string, error) {
	if !nbd.IsURI(path) {
		isLayer, err := sqlitelayer.IsLayer(path)
		if err != nil {
			return "", fmt.Errorf("open image %q: %w", path, err)
		}
		if isLayer {
			return disklayer.FormatHibdisk, nil
		}
	}
	format, err := detectedFormat(path)
	if err != nil {
		return "", fmt.Errorf("open image %q: %w", path, err)
	}
	return format, nil
}

// OpenImageStable is OpenImage holding the image so that nobody may write
// it while it is open (a read-only export), where OpenImage tolerates a
// writer of the top and reads its committed snapshots.
func OpenImageStable(path string) (*Disk, error) {
	return OpenImageWith(path, Options{HoldStable: true})
}

// OpenImageWith is OpenImage with the options that apply to a read-only
// image: HoldStable, Strict and ReconnectDelay.
func OpenImageWith(path string, opts Options) (*Disk, error) {
	stable := opts.HoldStable
	isLayer := false
	var err error
	if !nbd.IsURI(path) {
		if isLayer, err = sqlitelayer.IsLayer(path); err != nil {
			return nil, fmt.Errorf("open image %q: %w", path, err)
		}
	}
	if isLayer {
		return Open(path, Options{ReadOnly: true, HoldStable: stable, Strict: opts.Strict, ReconnectDelay: opts.ReconnectDelay})
	}
	format, err := detectedFormat(path)
	if err != nil {
		return nil, fmt.Errorf("open image %q: %w", path, err)
	}
	var l disklayer.Layer
	if format == disklayer.FormatRaw && !stable {
		l, err = rawlayer.Open(path, true)
	} else {
		l, err = openExternal(path, format, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("open image %q: %w", path, err)
	}
	d, err := compose(Options{ReadOnly: true}, []disklayer.Layer{l}, []layerMeta{{path: path, format: format}})
	if err != nil {
		closeLayers([]disklayer.Layer{l})
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
	var store *StoreParent
	for ref != nil {
		if isStoreFormat(ref.Format) {
			// The rest of the chain comes from the store, verified
			// there; it ends with it.
			link := fmt.Sprintf("parent %q of %q", ref.Path, childPath)
			if writableParent && len(layers) == 1 {
				return nil, &ParentError{Link: link, Child: childPath, Path: ref.Path, Ref: *ref, Err: fmt.Errorf("a parent read from a store is read-only: %w", disklayer.ErrReadOnly)}
			}
			if store, err = openStoreParent(*ref, opts); err != nil {
				return nil, &ParentError{Link: link, Child: childPath, Path: ref.Path, Ref: *ref, Err: err}
			}
			break
		}
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
		l, st, next, err := openParent(childPath, parentPath, *ref, writable, opts, restat)
		var missing *MissingParentError
		if errors.As(err, &missing) {
			missing.Link = link
			return nil, err
		}
		if err != nil {
			return nil, &ParentError{Link: link, Child: childPath, Path: parentPath, Ref: *ref, Err: err}
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
	// A layer made a read cache (create --read-cache) fills itself
	// whenever it is open writable.
	if top.Info().ReadCache && !opts.ReadOnly {
		opts.ReadCache = true
	}
	if store != nil {
		d, err := composeStore(opts, layers, metas, store)
		if err != nil {
			closeLayers(store.Layers)
		}
		return d, err
	}
	return compose(opts, layers, metas)
}

// MissingParentError is the ErrParentMismatch of a chain whose layer
// Child records a parent (Ref) whose file, resolved to Path, does not
// exist: it moved, or was removed. Link names the two as errors do.
type MissingParentError struct {
	Link, Child, Path string
	Ref               disklayer.ParentRef
}

func (e *MissingParentError) Error() string {
	return fmt.Sprintf("%s: %s recorded, file %q is missing: %v", e.Link, describeRef(e.Ref), e.Path, disklayer.ErrParentMismatch)
}

func (e *MissingParentError) Unwrap() error { return disklayer.ErrParentMismatch }

// ParentError is a parent that could not be opened, or is not the layer
// its child was made over (Err wraps ErrParentMismatch then): Link names
// the two as errors do, Path is the parent's file as resolved.
type ParentError struct {
	Link, Child, Path string
	Ref               disklayer.ParentRef
	Err               error
}

func (e *ParentError) Error() string { return e.Link + ": " + e.Err.Error() }

func (e *ParentError) Unwrap() error { return e.Err }

// openParent opens the parent a child recorded as ref, found at path, and
// verifies its identity. It returns the layer, its file info (for cycle
// detection) and the parent's own parent reference.
//
// A raw parent whose file identity changed but whose content matched
// sets *restat (when restat is not nil) to its new identity.
func openParent(child, path string, ref disklayer.ParentRef, writable bool, opts Options, restat *string) (disklayer.Layer, fs.FileInfo, *disklayer.ParentRef, error) {
	if ref.Format == disklayer.FormatNBD {
		l, err := openExternal(path, ref.Format, opts)
		if err == nil {
			_, err = verifyExternal(path, ref, l)
		}
		if err != nil {
			closeLayers([]disklayer.Layer{l})
			return nil, nil, nil, err
		}
		return l, nil, nil, nil
	}
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil, &MissingParentError{Child: child, Path: path, Ref: ref}
	}
	if err != nil {
		return nil, nil, nil, err
	}
	switch {
	case ref.Format == disklayer.FormatHibdisk:
		l, next, err := openHibdiskParent(path, ref, writable, opts.Strict)
		return l, st, next, err
	case ref.Format == disklayer.FormatRaw:
		raw, err := rawlayer.Open(path, !writable, rawlayer.HoldStable())
		if err != nil {
			return nil, nil, nil, err
		}
		if size := raw.Size(); size != ref.Size {
			raw.Close()
			return nil, nil, nil, fmt.Errorf("size %d recorded, file now has %d: %w", ref.Size, size, disklayer.ErrParentMismatch)
		}
		newStat, err := verifyRaw(path, ref)
		if err != nil {
			raw.Close()
			return nil, nil, nil, err
		}
		if newStat != "" && restat != nil {
			*restat = newStat
		}
		return raw, st, nil, nil
	case disklayer.IsQEMUFormat(ref.Format), ref.Format == disklayer.FormatOpenVMM:
		l, err := openExternal(path, ref.Format, Options{})
		if err != nil {
			return nil, nil, nil, err
		}
		newStat, err := verifyExternal(path, ref, l)
		if err != nil {
			l.(io.Closer).Close()
			return nil, nil, nil, err
		}
		if newStat != "" && restat != nil {
			*restat = newStat
		}
		return l, st, nil, nil
	}
	return nil, nil, nil, fmt.Errorf("unknown parent format %q: %w", ref.Format, disklayer.ErrCorrupt)
}

// openHibdiskParent opens a hibdisk parent and checks its uuid, size and
// generation.
func openHibdiskParent(path string, ref disklayer.ParentRef, writable, strict bool) (disklayer.Layer, *disklayer.ParentRef, error) {
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: !writable, Strict: strict, HoldStable: true})
	if errors.Is(err, disklayer.ErrNotLayer) {
		return nil, nil, fmt.Errorf("%s recorded, file is not a hibdisk layer: %w: %w", describeRef(ref), disklayer.ErrParentMismatch, err)
	}
	if err != nil {
		return nil, nil, err
	}
	info := f.Info()
	switch {
	case info.UUID != ref.UUID:
		err = fmt.Errorf("uuid %s recorded, file now has %s: %w", ref.UUID, info.UUID, disklayer.ErrParentMismatch)
	case info.DiskSize != ref.Size:
		err = fmt.Errorf("size %d recorded, file now has %d: %w", ref.Size, info.DiskSize, disklayer.ErrParentMismatch)
	case ref.Generation != 0 && info.Generation != ref.Generation:
		err = generationMoved(ref, info)
	}
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, info.Parent, nil
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
	switch ref.Format {
	case disklayer.FormatRaw:
		return fmt.Sprintf("raw image of %d bytes with digest %s", ref.Size, ref.Digest)
	case disklayer.FormatHibdisk:
	default:
		return fmt.Sprintf("%s image of %d bytes with digest %s", ref.Format, ref.Size, ref.Digest)
	}
	return fmt.Sprintf("hibdisk layer %s of %d bytes", ref.UUID, ref.Size)
}

// LayerInfo describes one layer of an open chain, for `hibdisk info`.
type LayerInfo struct {
	Depth      int    // 0 is the top
	Path       string // as opened; "" for a layer composed without a file
	Format     string // a parent format (disklayer.ParentFormats), or "" when unknown
	Size       int64
	SectorSize int
	// The rest is known for hibdisk layers only.
	UUID      string
	Label     string
	CreatedAt time.Time
	ReadOnly  bool // the layer's read_only flag
	// Sealed: read-only for good, its file's digest is its identity
	// (sqlitelayer.Seal).
	Sealed bool
	// Generation counts the layer's content-changing commits (0 for a
	// layer older than schema version 5).
	Generation int64
	ReadCache  bool                 // the layer's read_cache flag
	Parent     *disklayer.ParentRef // the reference as stored
	Stats      *sqlitelayer.Stats
}

// Layers describes every layer, top first.
func (d *Disk) Layers() ([]LayerInfo, error) { return d.layerInfos(true) }

// Chain describes every layer, top first, as Layers does but without
// Stats (nil), which count every row of a layer: what identifies the
// layers and links them, read from their layer rows alone.
func (d *Disk) Chain() ([]LayerInfo, error) { return d.layerInfos(false) }

func (d *Disk) layerInfos(withStats bool) ([]LayerInfo, error) {
	if d.closed.Load() {
		return nil, fmt.Errorf("layers of %s: %w", d.name, disklayer.ErrClosed)
	}
	list := make([]LayerInfo, len(d.layers))
	for i, l := range d.layers {
		li := LayerInfo{Depth: i, Path: d.meta[i].path, Format: d.meta[i].format, Size: l.Size(), SectorSize: l.SectorSize()}
		if f, ok := l.(*sqlitelayer.File); ok {
			info := f.Info()
			if li.Format != disklayer.FormatS3 {
				li.Format = disklayer.FormatHibdisk
			}
			li.UUID, li.Label, li.CreatedAt, li.ReadOnly, li.Parent = info.UUID, info.Label, info.CreatedAt, info.ReadOnly, info.Parent
			li.Generation, li.ReadCache, li.Sealed = info.Generation, info.ReadCache, info.Sealed
			// A layer read from a store is not counted: its rows would
			// be fetched, the whole layer.
			if withStats && d.meta[i].format != disklayer.FormatS3 {
				stats, err := f.Stats()
				if err != nil {
					return nil, fmt.Errorf("layers of %s: %w", d.name, err)
				}
				li.Stats = &stats
			}
		}
		list[i] = li
	}
	if last := len(list) - 1; disklayer.IsQEMUFormat(list[last].Format) {
		return appendImageChain(list)
	}
	return list, nil
}

// TopLayer describes the hibdisk layer at path alone, without opening its
// backing chain: what can still be said of a layer whose parent is
// missing (MissingParentError). It opens the layer read-only.
func TopLayer(path string) (LayerInfo, error) {
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		return LayerInfo{}, err
	}
	d, err := compose(Options{ReadOnly: true}, []disklayer.Layer{f}, []layerMeta{{path: path, format: disklayer.FormatHibdisk}})
	if err != nil {
		f.Close()
		return LayerInfo{}, err
	}
	defer d.Close()
	list, err := d.Layers()
	if err != nil {
		return LayerInfo{}, err
	}
	return list[0], nil
}

// appendImageChain describes the backing files of the foreign image at
// the bottom of list (a qcow2 over its own backing file keeps that chain
// inside QEMU's reading of it), as `qemu-img info --backing-chain` does.
func appendImageChain(list []LayerInfo) ([]LayerInfo, error) {
	base := &list[len(list)-1]
	chain, err := nbdlayer.Chain(base.Path, base.Format)
	if err != nil {
		return nil, err
	}
	for i, img := range chain {
		if i > 0 {
			list = append(list, LayerInfo{Depth: base.Depth + i, Path: img.Filename, Format: img.Format, Size: img.VirtualSize, SectorSize: disklayer.MinSectorSize})
		}
		if img.Backing != "" && i+1 < len(chain) {
			list[len(list)-1].Parent = &disklayer.ParentRef{Path: img.Backing, Format: chain[i+1].Format, Size: chain[i+1].VirtualSize}
		}
	}
	return list, nil
}

// refuseForeign is the error for a file whose magic number says it is an
// image hibdisk does not read (rawlayer.Detect named format): reading it
// as raw would give a silently wrong answer (compare says it differs from
// the image it came from, convert copies its file bytes). A raw image is
// only ever named raw explicitly (-F raw) or found to match no known
// format.
func refuseForeign(path, format string) error {
	switch format {
	case rawlayer.FormatSQLite:
		return fmt.Errorf("%q is an SQLite database but not a hibdisk layer (no hibdisk application_id), not a raw image: %w", path, disklayer.ErrForeignFormat)
	case rawlayer.FormatOpenVMM:
		return fmt.Errorf("%q is an OpenVMM disklayer_sqlite file, not a raw image; as a backing file, name it with -F %s: %w", path, disklayer.FormatOpenVMM, disklayer.ErrForeignFormat)
	case rawlayer.FormatLUKS:
		return fmt.Errorf("%q is a LUKS encrypted image, which hibdisk does not read (it needs a key): open it with qemu-nbd --object secret,... or cryptsetup and give hibdisk the NBD export or the decrypted device: %w", path, disklayer.ErrForeignFormat)
	}
	return fmt.Errorf("%q is a %s image (found by its magic number), not raw; hibdisk does not read %s: convert it first (qemu-img convert -O raw %s IMAGE.img): %w",
		path, format, format, path, disklayer.ErrForeignFormat)
}

// TopIdentity is the top layer's uuid and generation ("" and 0 when the
// top is not a hibdisk layer), without counting anything.
func (d *Disk) TopIdentity() (uuid string, generation int64) {
	if f, ok := d.layers[0].(*sqlitelayer.File); ok {
		info := f.Info()
		return info.UUID, info.Generation
	}
	return "", 0
}
