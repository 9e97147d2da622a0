package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "seal", summary: "make a layer and the layers below it immutable; print their digests", run: runSeal})
}

// sealJSON is one layer of `hibdisk seal --json`, base first. Stable:
// fields are only added.
type sealJSON struct {
	Filename string `json:"filename"`
	Digest   string `json:"digest"` // sha256:<hex> of the file
	Size     int64  `json:"size"`   // bytes of the file
	// AlreadySealed: the layer was sealed before and was not rewritten.
	AlreadySealed bool `json:"already-sealed"`
}

// runSeal seals the chain under LAYER (diffdisk.Seal) and prints each
// hibdisk layer's digest, base first, as sha256sum prints: digest, two
// spaces, file.
func runSeal(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "seal", "[--json|--output=json] LAYER")
	var f imgFlags
	f.addOutput(fs, "an array: one object per layer, base first")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	res, err := diffdisk.Seal(pos[0])
	if err != nil {
		return err
	}
	out := make([]sealJSON, len(res.Layers))
	for i, l := range res.Layers {
		out[i] = sealJSON{Filename: l.Path, Digest: l.Digest, Size: l.Size, AlreadySealed: l.Already}
	}
	if f.json {
		return writeJSON(e.stdout, out)
	}
	for _, l := range out {
		fmt.Fprintf(e.stdout, "%s  %s\n", l.Digest, l.Filename)
	}
	if b := res.Below; b != nil {
		fmt.Fprintf(e.stderr, "hibdisk seal: %s is a %s image, left as it is (push needs a hibdisk chain: convert it, then rebase -u)\n", b.Path, b.Format)
	}
	return nil
}
