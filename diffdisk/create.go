package diffdisk

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
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
	// Endpoint is the URL of the store of an s3:// backing file when
	// it is not the SDK's default (AWS_ENDPOINT_URL_S3, the profile,
	// AWS). The child records it with the parent.
	Endpoint string
	// ReadCache marks the new diff layer a read cache of its backing
	// file (sqlitelayer.Info.ReadCache): a writable open fills it with
	// what reads find below (Options.ReadCache) without being asked.
	ReadCache bool
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
		if opts.ReadCache {
			return fmt.Errorf("a read cache caches a backing file, and a base layer has none: %w", disklayer.ErrInvalid)
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
	var backing *Disk
	var ref *disklayer.ParentRef
	var err error
	if isStoreURL(opts.Backing) || isStoreFormat(opts.BackingFormat) {
		backing, ref, err = attachStoreParent(opts.Backing, opts.BackingFormat, opts.Endpoint)
	} else {
		backing, ref, err = openBacking(path, opts.Backing, opts.BackingFormat)
	}
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
		if ref.Format != disklayer.FormatHibdisk && ref.Format != disklayer.FormatS3 {
			sectorSize = rawDiffSectorSize(size)
		}
	}
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: size, SectorSize: sectorSize, Parent: ref, Label: opts.Label, ReadCache: opts.ReadCache})
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
// a hibdisk layer has the format the caller says (-F), never a guessed
// one: a stored reference read with the wrong format would be a silently
// different disk, and only the magic-number check protects against a
// raw image that happens to start like another format.
func backingFormat(backing, format string) (string, error) {
	if nbd.IsURI(backing) {
		if format != disklayer.FormatNBD {
			return "", fmt.Errorf("backing file %q is an NBD URI: say -F nbd: %w", backing, disklayer.ErrInvalid)
		}
		return format, nil
	}
	if format == disklayer.FormatNBD {
		return "", fmt.Errorf("backing format nbd needs an NBD URI (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH), not %q: %w", backing, disklayer.ErrInvalid)
	}
	isLayer, err := sqlitelayer.IsLayer(backing)
	if err != nil {
		return "", fmt.Errorf("backing file: %w", err)
	}
	switch {
	case format == "" && isLayer, format == disklayer.FormatHibdisk && isLayer:
		return disklayer.FormatHibdisk, nil
	case format == disklayer.FormatHibdisk:
		return "", fmt.Errorf("backing file %q given as %s is not a hibdisk layer: %w", backing, format, disklayer.ErrNotLayer)
	case format == "":
		return "", missingFormat(backing)
	case format == disklayer.FormatRaw:
		return format, nil
	case disklayer.IsQEMUFormat(format):
		detected, err := rawlayer.Detect(backing)
		if err != nil {
			return "", fmt.Errorf("backing file: %w", err)
		}
		if detected != format {
			return "", fmt.Errorf("backing file %q given as %s is not a %s image (its magic number says %s): %w", backing, format, format, describeDetected(detected), disklayer.ErrInvalid)
		}
		return format, nil
	case format == disklayer.FormatOpenVMM:
		return format, requireOpenVMM(backing)
	}
	return "", fmt.Errorf("backing format %q is not one of %s: %w", format, strings.Join(disklayer.ParentFormats(), ", "), disklayer.ErrInvalid)
}

// describeDetected names what rawlayer.Detect found.
func describeDetected(format string) string {
	if format == "" {
		return "raw"
	}
	return format
}

// missingFormat is the error for a backing file that is not a hibdisk
// layer, given without -F.
func missingFormat(backing string) error {
	detected, err := rawlayer.Detect(backing)
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	switch {
	case detected == "":
		return &FormatNeededError{Backing: backing, Detected: disklayer.FormatRaw}
	case disklayer.IsQEMUFormat(detected):
		return &FormatNeededError{Backing: backing, Detected: detected}
	}
	return fmt.Errorf("backing file: %w", refuseForeign(backing, detected))
}

// FormatNeededError is the error of a backing file that is not a hibdisk
// layer, given without its format (-F, CreateOptions.BackingFormat): a
// stored reference is never guessed. Detected is what the file's magic
// number suggests: raw when it matches no known format, or the QEMU
// format it looks like. It wraps disklayer.ErrNotLayer.
type FormatNeededError struct {
	Backing  string
	Detected string
}

func (e *FormatNeededError) Error() string {
	if e.Detected == disklayer.FormatRaw {
		return fmt.Sprintf("backing file %q is not a hibdisk layer; if it is a raw image, say so with -F raw (BackingFormat %q): %v", e.Backing, e.Detected, disklayer.ErrNotLayer)
	}
	return fmt.Sprintf("backing file %q looks like a %s image; a stored reference needs its format said, never guessed: add -F %s: %v", e.Backing, e.Detected, e.Detected, disklayer.ErrNotLayer)
}

func (e *FormatNeededError) Unwrap() error { return disklayer.ErrNotLayer }

// openBacking opens the backing file named from the working directory as
// a read-only chain (verifying it) and returns the reference a child at
// childPath records for it.
func openBacking(childPath, backing, format string) (*Disk, *disklayer.ParentRef, error) {
	format, err := backingFormat(backing, format)
	if err != nil {
		return nil, nil, err
	}
	if format == disklayer.FormatHibdisk {
		return openHibdiskBacking(childPath, backing)
	}
	rel := backing
	if format != disklayer.FormatNBD {
		if rel, err = relativeTo(childPath, backing); err != nil {
			return nil, nil, err
		}
	}
	// Held stable while its identity is taken: nobody may write it
	// between the digest and the child's creation.
	l, err := openExternal(backing, format, Options{})
	if err != nil {
		return nil, nil, fmt.Errorf("backing file: %w", err)
	}
	ref, err := identify(backing, format, l)
	if err != nil {
		closeLayers([]disklayer.Layer{l})
		return nil, nil, fmt.Errorf("backing file: %w", err)
	}
	ref.Path = rel
	d, err := compose(Options{ReadOnly: true}, []disklayer.Layer{l}, []layerMeta{{path: backing, format: format}})
	if err != nil {
		closeLayers([]disklayer.Layer{l})
		return nil, nil, err
	}
	return d, &ref, nil
}

// identify computes what a child records about a parent that is not a
// hibdisk layer, opened as l.
func identify(backing, format string, l disklayer.Layer) (disklayer.ParentRef, error) {
	if format != disklayer.FormatRaw {
		return externalIdentity(backing, format, l)
	}
	id, err := rawlayer.Identify(backing)
	if err != nil {
		return disklayer.ParentRef{}, err
	}
	// The layer rounds a file whose size is not a whole number of
	// sectors up (its tail reads as zeros), and opens compare with that.
	ss := int64(l.SectorSize())
	if (id.Size+ss-1)/ss*ss != l.Size() {
		return disklayer.ParentRef{}, fmt.Errorf("backing file %q changed size while it was read: %w", backing, disklayer.ErrParentMismatch)
	}
	return disklayer.ParentRef{Format: format, Size: l.Size(), Digest: id.Digest, SHA256: id.SHA256, Stat: id.Stat}, nil
}

// openHibdiskBacking opens a hibdisk backing chain and returns its
// reference.
func openHibdiskBacking(childPath, backing string) (*Disk, *disklayer.ParentRef, error) {
	rel, err := relativeTo(childPath, backing)
	if err != nil {
		return nil, nil, err
	}
	d, err := openChain(backing, Options{ReadOnly: true, HoldStable: true}, false)
	if err != nil {
		return nil, nil, fmt.Errorf("backing file %q: %w", backing, err)
	}
	info := d.layers[0].(*sqlitelayer.File).Info()
	ref := &disklayer.ParentRef{Path: rel, Format: disklayer.FormatHibdisk, UUID: info.UUID, Generation: info.Generation, Size: d.Size()}
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
