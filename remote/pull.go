package remote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/hibdisk/hibdisk/diffdisk"
)

// PulledLayer is one layer of a pull, base first.
type PulledLayer struct {
	Path       string // where it is now: the pull directory joined with the manifest's path
	Digest     string
	Size       int64
	Downloaded bool // false: a file with this digest was there already
}

// PullResult is what Pull did.
type PullResult struct {
	Manifest string
	Layers   []PulledLayer
	Top      string // the top layer's path: what to create a diff layer over
}

// Resolve returns the manifest digest u names: its pinned digest, or
// what its tag (DefaultTag when it has none) names now.
func (s *Store) Resolve(ctx context.Context, u URL) (string, error) {
	if u.Digest != "" {
		return u.Digest, nil
	}
	tag := u.Tag
	if tag == "" {
		tag = DefaultTag
	}
	ref, err := s.Tag(ctx, tag)
	if err != nil {
		return "", err
	}
	return ref.Manifest, nil
}

// Pull downloads the chain that u names (a tag, or a pinned manifest
// digest) into dir, which it creates if needed, recreating the layers'
// relative paths: the result opens as a chain whose top is
// PullResult.Top. Every blob is verified as it arrives (package doc); a
// file already in place is kept if it has the right digest and refused
// (ErrExists) otherwise.
func Pull(ctx context.Context, s *Store, u URL, dir string) (PullResult, error) {
	res, err := pull(ctx, s, u, dir)
	if err != nil {
		return PullResult{}, fmt.Errorf("pull %s into %s: %w", u, dir, err)
	}
	return res, nil
}

func pull(ctx context.Context, s *Store, u URL, dir string) (PullResult, error) {
	digest, err := s.Resolve(ctx, u)
	if err != nil {
		return PullResult{}, err
	}
	m, err := s.Manifest(ctx, digest)
	if err != nil {
		return PullResult{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return PullResult{}, err
	}
	res := PullResult{Manifest: digest}
	for _, l := range m.Layers {
		dest := filepath.Join(dir, l.Path) // Validate: l.Path is local
		downloaded, err := pullLayer(ctx, s, m, l, dest)
		if err != nil {
			return PullResult{}, err
		}
		res.Layers = append(res.Layers, PulledLayer{Path: dest, Digest: l.Digest, Size: l.Size, Downloaded: downloaded})
	}
	res.Top = res.Layers[len(res.Layers)-1].Path
	if err := verifyChain(m, res.Top); err != nil {
		return PullResult{}, err
	}
	return res, nil
}

// verifyChain opens the pulled chain, which checks every parent's
// identity as any open does, and compares its layers with the
// manifest's: each file's parent reference must lead to the file the
// manifest put below it.
func verifyChain(m *Manifest, top string) error {
	d, err := diffdisk.Open(top, diffdisk.Options{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("the pulled chain does not open: %w", err)
	}
	list, err := d.Chain()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if len(list) != len(m.Layers) {
		return fmt.Errorf("the pulled top %s opens as a chain of %d layers, the manifest lists %d: %w", top, len(list), len(m.Layers), ErrBadManifest)
	}
	for i, l := range list {
		want := m.Layers[len(m.Layers)-1-i]
		if l.UUID != want.UUID || l.Generation != want.Generation {
			return fmt.Errorf("layer %d of the pulled chain (%s) is %s at generation %d, the manifest says %s at %d: %w", i, l.Path, l.UUID, l.Generation, want.UUID, want.Generation, ErrBadManifest)
		}
	}
	return nil
}

// pullLayer puts the layer l at dest unless a file with its digest is
// there, and reports whether it downloaded it.
func pullLayer(ctx context.Context, s *Store, m *Manifest, l ManifestLayer, dest string) (bool, error) {
	if _, err := os.Lstat(dest); err == nil {
		d, _, err := fileDigest(dest)
		if err != nil {
			return false, err
		}
		if d != l.Digest {
			return false, fmt.Errorf("%s exists with digest %s, the layer is %s: remove it or pull into another directory: %w", dest, d, l.Digest, ErrExists)
		}
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return false, err
	}
	if err := download(ctx, s, m, l, dest); err != nil {
		return false, err
	}
	return true, nil
}

// download writes the blob of layer l to a hidden partial file beside
// dest, verifying every chunk as it arrives and the whole at the end,
// syncs it and links it into place. On any failure the partial file is
// removed and dest does not exist.
func download(ctx context.Context, s *Store, m *Manifest, l ManifestLayer, dest string) (err error) {
	partial := filepath.Join(filepath.Dir(dest), "."+filepath.Base(dest)+".partial")
	// A partial file is only ever this function's: one left by a pull
	// that was killed is stale.
	if err := os.Remove(partial); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(partial)
		}
	}()
	body, size, err := s.getBlob(ctx, l.Digest)
	if err != nil {
		return err
	}
	defer body.Close()
	if size != l.Size {
		return fmt.Errorf("blob %s in %s has %d bytes, the manifest says %d: the blob was changed in the store: %w", l.Digest, s.url, size, l.Size, ErrDigestMismatch)
	}
	h := newChunkHasher(m.ChunkSize, l.Chunks, l.Digest)
	n, err := io.Copy(io.MultiWriter(h, f), io.LimitReader(body, l.Size+1))
	if err != nil {
		return fmt.Errorf("download blob %s: %w", l.Digest, err)
	}
	if n != l.Size {
		return fmt.Errorf("blob %s: %d bytes arrived, the manifest says %d: %w", l.Digest, n, l.Size, ErrDigestMismatch)
	}
	got, err := h.finish()
	if err != nil {
		return err
	}
	if got != l.Digest {
		return fmt.Errorf("blob %s: its bytes have digest %s: the blob was changed in the store: %w", l.Digest, got, ErrDigestMismatch)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	cerr := f.Close()
	f = nil
	if cerr != nil {
		return cerr
	}
	// A link, not a rename: a file that appeared at dest meanwhile is
	// not replaced.
	if err := os.Link(partial, dest); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s appeared during the pull: remove it or pull into another directory: %w", dest, ErrExists)
		}
		return err
	}
	if err := os.Remove(partial); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dest))
}

func fileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := newChunkHasher(MinChunkSize, nil, path)
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	d, err := h.finish()
	return d, n, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
