package disklayer

import (
	"path/filepath"
	"slices"
)

// Parent formats: what a diff layer's parent is (ParentRef.Format, the
// SQLite layer's parent_format column).
const (
	FormatHibdisk = "hibdisk"
	FormatRaw     = "raw"
	// FormatNBD is an export of an NBD server; ParentRef.Path holds its
	// URI.
	FormatNBD = "nbd"
	// FormatOpenVMM is an OpenVMM disklayer_sqlite file, identified
	// like a raw image (size, digests of its guest view, file identity).
	FormatOpenVMM = "openvmm"
	// FormatS3 is a sealed chain pushed to an S3 bucket and read lazily
	// from it (package remote): ParentRef.Path holds the pinned URL
	// s3://BUCKET/PREFIX@sha256:<manifest hex>, SHA256 the digest of
	// the manifest's top layer, UUID and Generation that layer's.
	FormatS3 = "s3"
)

// QEMUFormats are the image formats hibdisk reads through QEMU's own code
// (qemu-nbd), by the names qemu-img uses for them.
var QEMUFormats = []string{"qcow2", "qcow", "qed", "vmdk", "vhdx", "vpc", "vdi", "parallels"}

// IsQEMUFormat reports whether format is one of QEMUFormats.
func IsQEMUFormat(format string) bool { return slices.Contains(QEMUFormats, format) }

// ParentFormats lists every format a parent may have, for messages.
func ParentFormats() []string {
	return append([]string{FormatHibdisk, FormatRaw, FormatNBD, FormatOpenVMM, FormatS3}, QEMUFormats...)
}

// KnownParentFormat reports whether format may be stored as a parent's.
func KnownParentFormat(format string) bool { return slices.Contains(ParentFormats(), format) }

// ParentRef is a diff layer's reference to the layer below it: the link
// record of a chain (package diffdisk), as the SQLite layer stores it in
// its layer row.
type ParentRef struct {
	Path   string // as stored: relative to the child's directory (absolute allowed)
	Format string // one of ParentFormats
	UUID   string // hibdisk parent's uuid; "" for raw
	Size   int64  // parent's size in bytes when attached
	Digest string // raw (and openvmm) parent: digest of size + sampled content; "" for hibdisk

	// Generation is a hibdisk parent's generation when attached (see
	// sqlitelayer/generation.go); 0 when not recorded (older layers).
	Generation int64
	// SHA256 is a raw parent's whole-content digest and Stat its file
	// identity when attached (rawlayer.ContentDigest, rawlayer.FileStat);
	// "" when not recorded (older layers). A parent in one of QEMUFormats
	// records the same of its guest view (SHA256) and the identities of
	// every file of its own backing chain (Stat). An NBD parent records
	// the sampled Digest of the export and, in Stat, what its server said
	// about it (the export description), since nothing else identifies a
	// remote disk. An OpenVMM parent records the digests of its guest
	// view and the identity of its file and -wal. A hibdisk parent
	// records, in SHA256, its file's digest ("sha256:<hex>") once it was
	// sealed (sqlitelayer.Seal): a sealed layer's identity is its bytes.
	SHA256 string
	Stat   string
}

// ResolvePath returns the parent's file name as seen from the working
// directory: Path joined to the directory of the child layer at childPath
// unless Path is absolute, an NBD URI or an s3:// URL.
func (r ParentRef) ResolvePath(childPath string) string {
	if filepath.IsAbs(r.Path) || r.Format == FormatNBD || r.Format == FormatS3 {
		return r.Path
	}
	return filepath.Join(filepath.Dir(childPath), r.Path)
}
