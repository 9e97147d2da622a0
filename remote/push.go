package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
)

// PushOptions configure Push.
type PushOptions struct {
	// ChunkSize is the manifest's chunk size; 0 means DefaultChunkSize.
	ChunkSize int64
	// NoPageDigests leaves the page digests out of the manifest (as
	// pushes before them did): lazy reads then fetch whole chunks.
	NoPageDigests bool
}

// PushedLayer is one layer of a push, base first.
type PushedLayer struct {
	Path     string // the layer file, as opened
	Digest   string
	Size     int64
	Uploaded bool // false: the store had it already
	Sealed   bool // this push sealed it (false: it was sealed before)
}

// PushResult is what Push did.
type PushResult struct {
	URL      URL    // s3://BUCKET/PREFIX:TAG
	Manifest string // the manifest's digest, which the tag now names
	// Previous is the manifest the tag named before ("" for a new tag).
	Previous string
	Layers   []PushedLayer
}

// chainLayer is a layer of the chain to push, as its manifest entry will
// name it.
type chainLayer struct {
	path       string // as opened
	rel        string // the manifest's path
	uuid       string
	generation int64
}

// Push seals the chain whose top is the layer at path (diffdisk.Seal),
// uploads every layer the store lacks, then the manifest, then moves tag
// to it with a compare-and-swap against the tag as it was when the push
// began. See the package doc for what an interrupted push leaves.
func Push(ctx context.Context, s *Store, path, tag string, opts PushOptions) (PushResult, error) {
	res, err := push(ctx, s, path, tag, opts)
	if err != nil {
		return PushResult{}, fmt.Errorf("push %s to %s:%s: %w", path, s.url, tag, err)
	}
	return res, nil
}

func push(ctx context.Context, s *Store, path, tag string, opts PushOptions) (PushResult, error) {
	if !tagPattern.MatchString(tag) {
		return PushResult{}, fmt.Errorf("tag %q: want letters, digits, '_', '.', '-': %w", tag, ErrBadURL)
	}
	chunkSize := opts.ChunkSize
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	chain, m, err := pushPlan(path)
	if err != nil {
		return PushResult{}, err
	}
	m.ChunkSize = chunkSize
	s.event("planned")
	// The tag as it is before anything is uploaded: the swap at the end
	// fails if another push moved it meanwhile.
	prev, err := s.Tag(ctx, tag)
	if err != nil && !errors.Is(err, ErrNoTag) {
		return PushResult{}, err
	}
	// The seal digests each layer file (the one it made, or the one it
	// found sealed) with digestFile, so that one read gives the chunk
	// and part digests too.
	digests := map[string]fileDigests{}
	sealed, err := diffdisk.SealWith(path, diffdisk.SealOptions{Digest: func(p string) (string, int64, error) {
		fd, err := digestFile(p, chunkSize, !opts.NoPageDigests)
		if err != nil {
			return "", 0, err
		}
		digests[fd.digest] = fd
		return fd.digest, fd.size, nil
	}})
	if err != nil {
		return PushResult{}, err
	}
	s.event("sealed")
	if len(sealed.Layers) != len(chain) {
		return PushResult{}, fmt.Errorf("sealed %d layers of a chain of %d (the chain changed during the push)", len(sealed.Layers), len(chain))
	}
	res := PushResult{URL: s.url, Previous: prev.Manifest}
	res.URL.Tag = tag
	for i, c := range chain {
		sl := sealed.Layers[i]
		l, err := pushLayer(ctx, s, c, digests[sl.Digest])
		if err != nil {
			return PushResult{}, err
		}
		m.Layers = append(m.Layers, l.entry)
		res.Layers = append(res.Layers, PushedLayer{Path: c.path, Digest: sl.Digest, Size: sl.Size, Uploaded: l.uploaded, Sealed: !sl.Already})
	}
	b, digest, err := m.Encode()
	if err != nil {
		return PushResult{}, err
	}
	if _, err := s.putBlob(ctx, digest, bytes.NewReader(b), int64(len(b)), nil); err != nil {
		return PushResult{}, fmt.Errorf("manifest: %w", err)
	}
	res.Manifest = digest
	s.event("manifest")
	if prev.Manifest == digest {
		return res, nil // the tag names this chain already
	}
	s.event("tag")
	if err := s.SetTag(ctx, tag, digest, prev); err != nil {
		return PushResult{}, err
	}
	return res, nil
}

type pushedLayer struct {
	entry    ManifestLayer
	uploaded bool
}

// pushLayer uploads a sealed layer, with the digests its seal took,
// unless the store has it.
func pushLayer(ctx context.Context, s *Store, c chainLayer, fd fileDigests) (pushedLayer, error) {
	if fd.digest == "" {
		return pushedLayer{}, fmt.Errorf("layer %q: sealed without its digests", c.path)
	}
	f, err := os.Open(c.path)
	if err != nil {
		return pushedLayer{}, err
	}
	defer f.Close()
	uploaded, err := s.putBlob(ctx, fd.digest, f, fd.size, fd.parts)
	if err != nil {
		return pushedLayer{}, fmt.Errorf("layer %q: %w", c.path, err)
	}
	entry := ManifestLayer{Digest: fd.digest, Size: fd.size, Path: c.rel, UUID: c.uuid, Generation: c.generation, Chunks: fd.chunks}
	if fd.pages != nil {
		pd, err := bytesDigests(fd.pages, PageDigestChunkSize)
		if err != nil {
			return pushedLayer{}, fmt.Errorf("layer %q: page digests: %w", c.path, err)
		}
		if _, err := s.putBlob(ctx, pd.digest, bytes.NewReader(fd.pages), pd.size, pd.parts); err != nil {
			return pushedLayer{}, fmt.Errorf("layer %q: page digests: %w", c.path, err)
		}
		entry.PageSize = fd.pageSize
		entry.Pages = &PageDigests{Digest: pd.digest, Size: pd.size, ChunkSize: PageDigestChunkSize, Chunks: pd.chunks}
	}
	return pushedLayer{entry: entry, uploaded: uploaded}, nil
}

// pushPlan opens the chain at path and returns its layers base first,
// with the paths pull will give them, and the manifest's disk geometry.
// It refuses what cannot be pushed, saying how to fix it.
func pushPlan(path string) ([]chainLayer, *Manifest, error) {
	d, err := diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
	if err != nil {
		return nil, nil, err
	}
	list, err := d.Chain()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, nil, err
	}
	m := &Manifest{MediaType: ManifestMediaType, SectorSize: list[0].SectorSize, DiskSize: list[0].Size}
	chain := make([]chainLayer, len(list))
	rel := filepath.Base(path)
	for i, l := range list {
		if l.Format != disklayer.FormatHibdisk {
			child := list[i-1]
			return nil, nil, fmt.Errorf("layer %q has a %s parent %q: only hibdisk layers can be pushed; convert it (hibdisk convert -O hibdisk %s BASE.db) and record the new parent (hibdisk rebase -u -b BASE.db %s): %w",
				child.Path, l.Format, child.Parent.Path, l.Path, child.Path, ErrNotPushable)
		}
		chain[len(list)-1-i] = chainLayer{path: l.Path, rel: rel, uuid: l.UUID, generation: l.Generation}
		if p := l.Parent; p != nil {
			next := filepath.Join(filepath.Dir(rel), p.Path)
			if filepath.IsAbs(p.Path) || !filepath.IsLocal(next) {
				return nil, nil, fmt.Errorf("layer %q records its parent as %q, which is absolute or climbs out of the top's directory with '..': move the parent beside or below its child and record it (hibdisk rebase -u -b NEWPATH %s): %w",
					l.Path, p.Path, l.Path, ErrNotPushable)
			}
			rel = next
		}
	}
	return chain, m, nil
}
