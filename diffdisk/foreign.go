package diffdisk

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/nbdlayer"
	"github.com/hibdisk/hibdisk/disklayer/openvmmlayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
)

// Layers that are not hibdisk's own: images in QEMU's formats, read
// through a private qemu-nbd, and NBD exports. Both are identified the
// way a raw base is (identity.go in rawlayer): size, a sampled digest of
// the guest view checked at every open, and a whole-content digest of
// the guest view checked when the files changed identity. An NBD export
// has no files: its identity is its size, its sampled digest and what
// its server says about it.

// DefaultReconnectDelay is how long reads wait for a lost NBD server to
// come back before they fail with EIO (Options.ReconnectDelay).
const DefaultReconnectDelay = 30 * time.Second

// openExternal opens a non-hibdisk layer of a known format: raw, an
// image QEMU reads, or an NBD URI.
func openExternal(path, format string, opts Options) (disklayer.Layer, error) {
	var l disklayer.Layer
	var err error
	switch {
	case format == disklayer.FormatNBD:
		delay := opts.ReconnectDelay
		if delay == 0 {
			delay = DefaultReconnectDelay
		}
		l, err = nonNil(nbdlayer.Dial(path, nbd.ClientOptions{ReconnectDelay: max(delay, 0)}))
	case disklayer.IsQEMUFormat(format):
		l, err = nonNil(nbdlayer.OpenImage(path, format))
	case format == disklayer.FormatRaw:
		l, err = nonNil(rawlayer.Open(path, true, rawlayer.HoldStable()))
	case format == disklayer.FormatOpenVMM:
		l, err = nonNil(openvmmlayer.Open(path))
	default:
		err = fmt.Errorf("%q: unknown image format %q: %w", path, format, disklayer.ErrInvalid)
	}
	return l, err
}

// nonNil turns a failed open's typed nil into a nil Layer.
func nonNil[L disklayer.Layer](l L, err error) (disklayer.Layer, error) {
	if err != nil {
		return nil, err
	}
	return l, nil
}

// externalIdentity is what a child records about a parent in a QEMU
// format or an NBD export, l being that parent opened.
func externalIdentity(path, format string, l disklayer.Layer) (disklayer.ParentRef, error) {
	ref := disklayer.ParentRef{Format: format, Size: l.Size()}
	var err error
	if ref.Digest, err = rawlayer.DigestReaderAt(l, l.Size()); err != nil {
		return ref, err
	}
	if format == disklayer.FormatNBD {
		ref.Stat = serverIdentity(l)
		return ref, nil
	}
	if ref.Stat, err = filesStat(path, format); err != nil {
		return ref, err
	}
	if ref.SHA256, err = rawlayer.ViewDigest(l); err != nil {
		return ref, err
	}
	after, err := filesStat(path, format)
	if err != nil {
		return ref, err
	}
	if after != ref.Stat {
		return ref, fmt.Errorf("%s image %q changed while it was read (%s, then %s); stop whoever writes it and retry", format, path, ref.Stat, after)
	}
	return ref, nil
}

// serverIdentity is what an NBD server said about its export.
func serverIdentity(l disklayer.Layer) string {
	nl, ok := l.(*nbdlayer.Layer)
	if !ok {
		return ""
	}
	return "description=" + nl.Info().Description
}

// filesStat is the file identity (rawlayer.FileStat) of every file the
// layer's content lives in: an OpenVMM file and its -wal (openVMMStat),
// or every file of a QEMU image's own backing chain (chainStat).
func filesStat(path, format string) (string, error) {
	if format == disklayer.FormatOpenVMM {
		return openVMMStat(path)
	}
	return chainStat(path, format)
}

// chainStat is the file identity (rawlayer.FileStat) of every file of a
// QEMU image's own backing chain, top first.
func chainStat(path, format string) (string, error) {
	chain, err := nbdlayer.Chain(path, format)
	if err != nil {
		return "", err
	}
	stats := make([]string, len(chain))
	for i, img := range chain {
		if stats[i], err = rawlayer.FileStat(img.Filename); err != nil {
			return "", fmt.Errorf("%s image %q: backing file: %w", format, path, err)
		}
	}
	return strings.Join(stats, " | "), nil
}

// verifyExternal checks a parent in a QEMU format or an NBD export,
// opened as l, against what its child recorded, as verifyRaw does for a
// raw one. It returns the new file identity when the files changed
// identity but not content.
func verifyExternal(path string, ref disklayer.ParentRef, l disklayer.Layer) (newStat string, err error) {
	if l.Size() != ref.Size {
		return "", fmt.Errorf("size %d recorded, %s now has %d: %w", ref.Size, ref.Format, l.Size(), disklayer.ErrParentMismatch)
	}
	if ref.Format == disklayer.FormatNBD {
		if got := serverIdentity(l); got != ref.Stat {
			return "", fmt.Errorf("the server said %q when this layer was made, and now says %q: it may serve another disk; if the change is intended, `hibdisk rebase -u -b URI -F nbd LAYER` accepts it: %w", ref.Stat, got, disklayer.ErrParentMismatch)
		}
		if namesGeneration(ref.Stat) {
			// A read-only hibdisk export names its layer's uuid and
			// generation, which change with any content change: the
			// same trust as a local hibdisk parent's, without reading.
			return "", nil
		}
	}
	digest, err := rawlayer.DigestReaderAt(l, l.Size())
	if err != nil {
		return "", err
	}
	if digest != ref.Digest {
		return "", fmt.Errorf("digest %s recorded, the %s image now has %s: its content changed after this layer was made over it; if the change is intended, `hibdisk rebase -u -b IMAGE -F %s LAYER` accepts it: %w", ref.Digest, ref.Format, digest, ref.Format, disklayer.ErrParentMismatch)
	}
	if ref.Format == disklayer.FormatNBD {
		return "", nil
	}
	stat, err := filesStat(path, ref.Format)
	if err != nil || stat == ref.Stat {
		return "", err
	}
	sum, err := rawlayer.ViewDigest(l)
	if err != nil {
		return "", err
	}
	if sum != ref.SHA256 {
		return "", fmt.Errorf("content %s recorded, the %s image now has %s (files were %s, are now %s): it changed after this layer was made over it; if the change is intended, `hibdisk rebase -u -b IMAGE -F %s LAYER` accepts it: %w",
			ref.SHA256, ref.Format, sum, ref.Stat, stat, ref.Format, disklayer.ErrParentMismatch)
	}
	return stat, nil
}

// detectedFormat is the format of an image that is not a hibdisk layer,
// for a read-only command that was not told it: an NBD URI, a format
// QEMU reads (by its magic number, as QEMU probes), or raw. Formats
// hibdisk cannot read are refused.
func detectedFormat(path string) (string, error) {
	if nbd.IsURI(path) {
		return disklayer.FormatNBD, nil
	}
	format, err := rawlayer.Detect(path)
	if err != nil {
		return "", err
	}
	switch {
	case format == "":
		return disklayer.FormatRaw, nil
	case disklayer.IsQEMUFormat(format):
		return format, nil
	case format == rawlayer.FormatOpenVMM:
		return disklayer.FormatOpenVMM, nil
	}
	return "", refuseForeign(path, format)
}

// RemoteBase is what one NBD export in a chain has cost so far.
type RemoteBase struct {
	URI string
	// Fetched counts data bytes read from the server (identity checks
	// at open included); Reconnects counts redials that succeeded.
	Fetched, Reconnects int64
}

// RemoteBases lists the chain's layers that are NBD exports (format
// nbd, not the private qemu-nbd behind an image in a QEMU format), top
// first.
func (d *Disk) RemoteBases() []RemoteBase {
	var out []RemoteBase
	for i, l := range d.layers {
		nl, ok := l.(*nbdlayer.Layer)
		if !ok || d.meta[i].format != disklayer.FormatNBD {
			continue
		}
		out = append(out, RemoteBase{URI: nl.URI(), Fetched: nl.Fetched(), Reconnects: nl.Reconnects()})
	}
	return out
}

// hibdiskExport matches what a read-only `hibdisk serve` export says
// about itself (cmd/hibdisk describe): its layer's uuid and generation.
var hibdiskExport = regexp.MustCompile(`^description=hibdisk .*, layer [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12} generation [1-9][0-9]*$`)

// namesGeneration reports whether an NBD parent's recorded server
// identity is a read-only hibdisk export's.
func namesGeneration(stat string) bool { return hibdiskExport.MatchString(stat) }
