package remote

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/hibdisk/hibdisk/remote/chunks"
)

// ManifestMediaType is a manifest's mediaType.
const ManifestMediaType = "application/vnd.hibdisk.manifest.v1+json"

// DefaultChunkSize is the chunk a manifest digests layers by: 256 KiB,
// chosen by cold boots of the Debian guest over a lazy base against
// versitygw (docs/remote-work.md, "Measured"): bytes fetched 1.88x what
// the guest read in 256 GETs, where 64 KiB fetched 1.42x in 770 GETs but
// took twice as long (each GET's latency is on a read's path) and 1 MiB
// fetched 3.36x. A power of two from MinChunkSize, so no SQLite page
// straddles two chunks.
const DefaultChunkSize = 256 << 10

// MinChunkSize is the smallest chunk size: 64 KiB, SQLite's largest page.
const MinChunkSize = 64 << 10

// PageDigestChunkSize is the chunk a layer's page-digest blob is
// digested by: 16 KiB, the digests of 512 pages (2 MiB of a layer of
// 4 KiB pages). A lazy read fetches the chunk of digests its page
// needs, so the chunk is small: on the Debian boot, 16 KiB chunks of
// digests cost 3.5 % of what the guest read, 256 KiB ones 8.8 %
// (docs/remote-work.md, "Page granularity").
const PageDigestChunkSize = 16 << 10

// Manifest describes a pushed chain. Its JSON is stored as a blob by its
// own digest; Encode gives the bytes.
type Manifest struct {
	MediaType  string          `json:"mediaType"`
	SectorSize int             `json:"sectorSize"`
	DiskSize   int64           `json:"diskSize"`
	ChunkSize  int64           `json:"chunkSize"`
	Layers     []ManifestLayer `json:"layers"` // base first, top last
}

// ManifestLayer is one layer of a manifest.
type ManifestLayer struct {
	Digest string `json:"digest"` // "sha256:<hex>" of the layer file
	Size   int64  `json:"size"`   // bytes of the layer file
	// Path is where pull puts the layer, relative to the pull directory:
	// the top is its base name, a parent is its child's directory joined
	// with the parent path the child stores.
	Path       string `json:"path"`
	UUID       string `json:"uuid"`
	Generation int64  `json:"generation"`
	// Chunks is the SHA-256 of each ChunkSize piece of the file, 32
	// bytes each, concatenated (base64 in JSON).
	Chunks []byte `json:"chunks"`
	// PageSize and Pages, when set, let lazy reads fetch and verify the
	// layer a page at a time: Pages is the blob holding the SHA-256 of
	// each PageSize piece of the file (the layer's SQLite page size),
	// 32 bytes each, concatenated. Manifests without them (and pull)
	// read by chunks.
	PageSize int64        `json:"pageSize,omitempty"`
	Pages    *PageDigests `json:"pages,omitempty"`
}

// PageDigests names a layer's page-digest blob, which lazy reads fetch
// by range and verify by its own chunk digests.
type PageDigests struct {
	Digest    string `json:"digest"` // "sha256:<hex>" of the blob
	Size      int64  `json:"size"`   // 32 bytes per page of the layer
	ChunkSize int64  `json:"chunkSize"`
	// Chunks is the SHA-256 of each ChunkSize piece of the blob, as a
	// layer's Chunks.
	Chunks []byte `json:"chunks"`
}

// Top is the manifest's top layer.
func (m *Manifest) Top() ManifestLayer { return m.Layers[len(m.Layers)-1] }

// ChunkDigest returns the SHA-256 of chunk i of layer l.
func (l ManifestLayer) ChunkDigest(i int64) []byte {
	return l.Chunks[i*sha256.Size : (i+1)*sha256.Size]
}

// Encode returns the manifest's bytes and their digest.
func (m *Manifest) Encode() ([]byte, string, error) {
	if err := m.Validate(); err != nil {
		return nil, "", err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, "", err
	}
	return b, digestBytes(b), nil
}

// DecodeManifest parses and validates a manifest read from the store as
// the blob with the given digest, which its bytes must have.
func DecodeManifest(b []byte, digest string) (*Manifest, error) {
	if got := digestBytes(b); got != digest {
		return nil, fmt.Errorf("manifest %s: its bytes have digest %s: %w", digest, got, ErrDigestMismatch)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("manifest %s: %v: %w", digest, err, ErrBadManifest)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", digest, err)
	}
	return &m, nil
}

// Validate checks what pull and lazy reads rely on: the media type, a
// chunk size that is a power of two from MinChunkSize, layers with valid
// digests, one chunk digest per chunk, and paths inside the pull
// directory, each used once.
func (m *Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrBadManifest)
	}
	switch {
	case m.MediaType != ManifestMediaType:
		return bad("media type %q, want %q", m.MediaType, ManifestMediaType)
	case m.ChunkSize < MinChunkSize || m.ChunkSize&(m.ChunkSize-1) != 0:
		return bad("chunk size %d is not a power of two from %d", m.ChunkSize, MinChunkSize)
	case len(m.Layers) == 0:
		return bad("no layers")
	case m.SectorSize <= 0 || m.DiskSize < 0:
		return bad("sector size %d, disk size %d", m.SectorSize, m.DiskSize)
	}
	paths := map[string]bool{}
	for i, l := range m.Layers {
		switch {
		case !validDigest(l.Digest):
			return bad("layer %d: digest %q is not sha256:<64 hex digits>", i, l.Digest)
		case l.Size <= 0:
			return bad("layer %d: size %d", i, l.Size)
		case int64(len(l.Chunks)) != chunkCount(l.Size, m.ChunkSize)*sha256.Size:
			return bad("layer %d: %d bytes of chunk digests for %d chunks", i, len(l.Chunks), chunkCount(l.Size, m.ChunkSize))
		case !filepath.IsLocal(l.Path) || filepath.Clean(l.Path) != l.Path:
			return bad("layer %d: path %q is not a clean path inside the pull directory", i, l.Path)
		case paths[l.Path]:
			return bad("layer %d: path %q used twice", i, l.Path)
		case l.UUID == "":
			return bad("layer %d: no uuid", i)
		}
		if err := l.validatePages(); err != nil {
			return bad("layer %d: %v", i, err)
		}
		paths[l.Path] = true
	}
	return nil
}

// validatePages checks a layer's page digests, when it has them.
func (l ManifestLayer) validatePages() error {
	p := l.Pages
	switch {
	case p == nil && l.PageSize == 0:
		return nil
	case p == nil:
		return fmt.Errorf("page size %d without page digests", l.PageSize)
	case l.PageSize < 512 || l.PageSize > MinChunkSize || l.PageSize&(l.PageSize-1) != 0:
		return fmt.Errorf("page size %d is not an SQLite page size", l.PageSize)
	case !validDigest(p.Digest):
		return fmt.Errorf("page digests %q is not sha256:<64 hex digits>", p.Digest)
	case p.Size != chunkCount(l.Size, l.PageSize)*sha256.Size:
		return fmt.Errorf("%d bytes of page digests for %d pages", p.Size, chunkCount(l.Size, l.PageSize))
	case p.ChunkSize < chunks.SmallestChunkSize || p.ChunkSize > chunks.MaxChunkSize || p.ChunkSize&(p.ChunkSize-1) != 0:
		return fmt.Errorf("page digests' chunk size %d is not a power of two in [%d, %d]", p.ChunkSize, chunks.SmallestChunkSize, chunks.MaxChunkSize)
	case int64(len(p.Chunks)) != chunkCount(p.Size, p.ChunkSize)*sha256.Size:
		return fmt.Errorf("%d bytes of chunk digests for the %d chunks of its page digests", len(p.Chunks), chunkCount(p.Size, p.ChunkSize))
	}
	return nil
}

func chunkCount(size, chunkSize int64) int64 { return (size + chunkSize - 1) / chunkSize }

func digestBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
