package diffdisk

import (
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// SealResult is what Seal did to a chain.
type SealResult struct {
	// Layers are the chain's hibdisk layers, base first, as
	// sqlitelayer.Seal left them.
	Layers []sqlitelayer.Sealed
	// Below is the layer under the lowest hibdisk layer when that is of
	// another format (raw, qcow2, nbd, ...), which Seal leaves as it is;
	// nil when the chain is hibdisk to its base.
	Below *LayerInfo
}

// Seal seals the chain whose top is the hibdisk layer at path, from the
// bottom up (docs/remote-work.md): each hibdisk layer not sealed yet is
// sealed (sqlitelayer.Seal) after its parent, recording the parent's
// digest, so a child's digest covers its parent's. The chain is opened
// first, which verifies every parent's identity as Open does: a broken
// chain is refused before anything is sealed. A layer in use (someone
// holds it writable, or a chain over it is open) is refused, naming the
// holder, before any layer is sealed (unless it is taken between that
// check and its turn). A parent of another format stops nothing: it is left as it is
// and reported in SealResult.Below (push refuses such a chain).
func Seal(path string) (SealResult, error) { return SealWith(path, SealOptions{}) }

// SealOptions configure SealWith.
type SealOptions struct {
	// Digest, when set, computes each layer file's digest in place of
	// sqlitelayer.FileDigest (sqlitelayer.SealOptions.Digest).
	Digest func(path string) (digest string, size int64, err error)
}

// SealWith is Seal with options.
func SealWith(path string, opts SealOptions) (SealResult, error) {
	d, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		return SealResult{}, fmt.Errorf("seal %q: %w", path, err)
	}
	list, err := d.Chain()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return SealResult{}, fmt.Errorf("seal %q: %w", path, err)
	}
	var res SealResult
	hib := len(list)
	for i, l := range list {
		if l.Format != disklayer.FormatHibdisk {
			below := list[i]
			res.Below = &below
			hib = i
			break
		}
	}
	for _, l := range list[:hib] {
		if !l.Sealed {
			if err := sqlitelayer.CheckUnheld(l.Path); err != nil {
				return SealResult{}, err
			}
		}
	}
	parentDigest := ""
	for i := hib - 1; i >= 0; i-- {
		s, err := sqlitelayer.Seal(list[i].Path, sqlitelayer.SealOptions{ParentSHA256: parentDigest, Digest: opts.Digest})
		if err != nil {
			return SealResult{}, err
		}
		res.Layers = append(res.Layers, s)
		parentDigest = s.Digest
	}
	return res, nil
}
