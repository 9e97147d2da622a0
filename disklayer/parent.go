package disklayer

import "path/filepath"

// Parent formats: what a diff layer's parent is (ParentRef.Format, the
// SQLite layer's parent_format column).
const (
	FormatHibdisk = "hibdisk"
	FormatRaw     = "raw"
	// FormatOpenVMM is an OpenVMM disklayer_sqlite file, identified
	// like a raw image (size, digests of its guest view, file identity).
	FormatOpenVMM = "openvmm"
)

// ParentRef is a diff layer's reference to the layer below it: the link
// record of a chain (package diffdisk), as the SQLite layer stores it in
// its layer row.
type ParentRef struct {
	Path   string // as stored: relative to the child's directory (absolute allowed)
	Format string // FormatHibdisk, FormatRaw or FormatOpenVMM
	UUID   string // hibdisk parent's uuid; "" for raw
	Size   int64  // parent's size in bytes when attached
	Digest string // raw (and openvmm) parent: digest of size + sampled content; "" for hibdisk

	// Generation is a hibdisk parent's generation when attached (see
	// sqlitelayer/generation.go); 0 when not recorded (older layers).
	Generation int64
	// SHA256 is a raw parent's whole-content digest and Stat its file
	// identity when attached (rawlayer.ContentDigest, rawlayer.FileStat);
	// "" when not recorded (older layers). An OpenVMM parent records
	// the same digests of its guest view (rawlayer.ViewContentDigest) and
	// the identity of its file and -wal.
	SHA256 string
	Stat   string
}

// ResolvePath returns the parent's file name as seen from the working
// directory: Path joined to the directory of the child layer at childPath
// unless Path is absolute.
func (r ParentRef) ResolvePath(childPath string) string {
	if filepath.IsAbs(r.Path) {
		return r.Path
	}
	return filepath.Join(filepath.Dir(childPath), r.Path)
}
