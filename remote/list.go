package remote

import (
	"context"
	"fmt"
)

// TagInfo is one tag of a store, as ls-remote lists it.
type TagInfo struct {
	Tag      string
	Manifest string // the digest the tag names
	Layers   int    // layers of the chain
	Bytes    int64  // bytes of its layer files
	DiskSize int64  // the disk the chain is
}

// List describes every tag of the store, sorted by tag.
func List(ctx context.Context, s *Store) ([]TagInfo, error) {
	tags, err := s.Tags(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]TagInfo, 0, len(tags))
	for _, tag := range tags {
		ref, err := s.Tag(ctx, tag)
		if err != nil {
			return nil, err
		}
		m, err := s.Manifest(ctx, ref.Manifest)
		if err != nil {
			return nil, fmt.Errorf("tag %s: %w", tag, err)
		}
		info := TagInfo{Tag: tag, Manifest: ref.Manifest, Layers: len(m.Layers), DiskSize: m.DiskSize}
		for _, l := range m.Layers {
			info.Bytes += l.Size
		}
		out = append(out, info)
	}
	return out, nil
}
