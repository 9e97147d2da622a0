package diffdisk

import (
	"fmt"
	"os"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/openvmmlayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
)

// OpenVMM disklayer_sqlite files (package openvmmlayer) in chains: read
// as images, and as read-only parents identified the way raw images are
// (size, a sampled and a whole-content digest, the file's identity), but
// of their guest view rather than their file bytes.

// isOpenVMM reports whether the file at path is an OpenVMM file, by the
// one detection there is (rawlayer.Detect).
func isOpenVMM(path string) (bool, error) {
	format, err := rawlayer.Detect(path)
	return format == rawlayer.FormatOpenVMM, err
}

// requireOpenVMM refuses a backing file named openvmm that is not one.
func requireOpenVMM(path string) error {
	ok, err := isOpenVMM(path)
	if err != nil {
		return fmt.Errorf("backing file: %w", err)
	}
	if !ok {
		return fmt.Errorf("backing file %q given as %s is not an OpenVMM disklayer_sqlite file: %w", path, disklayer.FormatOpenVMM, disklayer.ErrInvalid)
	}
	return nil
}

// openOpenVMMBacking opens an OpenVMM backing file for a new child and
// fills in ref with its identity.
func openOpenVMMBacking(backing string, ref *disklayer.ParentRef) (*Disk, *disklayer.ParentRef, error) {
	l, err := openvmmlayer.Open(backing)
	if err != nil {
		return nil, nil, fmt.Errorf("backing file: %w", err)
	}
	if err := identifyOpenVMM(backing, l, ref); err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("backing file: %w", err)
	}
	d, err := compose(Options{ReadOnly: true}, []disklayer.Layer{l}, []layerMeta{{path: backing, format: disklayer.FormatOpenVMM}})
	if err != nil {
		l.Close()
		return nil, nil, err
	}
	return d, ref, nil
}

// identifyOpenVMM records in ref the identity of the OpenVMM file at path,
// open as l, refusing a file that changed while it was read.
func identifyOpenVMM(path string, l *openvmmlayer.Layer, ref *disklayer.ParentRef) error {
	before, err := openVMMStat(path)
	if err != nil {
		return err
	}
	digest, err := rawlayer.DigestReaderAt(l, l.Size())
	if err != nil {
		return fmt.Errorf("digest OpenVMM layer %q: %w", path, err)
	}
	sum, err := rawlayer.ViewDigest(l)
	if err != nil {
		return fmt.Errorf("digest OpenVMM layer %q: %w", path, err)
	}
	after, err := openVMMStat(path)
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("identify OpenVMM layer %q: it changed while it was read (%s, then %s); stop whoever writes it and retry", path, before, after)
	}
	ref.Size, ref.Digest, ref.SHA256, ref.Stat = l.Size(), digest, sum, before
	return nil
}

// openVMMStat is the identity of an OpenVMM file: rawlayer.FileStat of
// the file, and of its -wal when there is one, since commits reach the
// -wal long before a checkpoint touches the file.
func openVMMStat(path string) (string, error) {
	stat, err := rawlayer.FileStat(path)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(path + "-wal"); err != nil {
		return stat, nil
	}
	wal, err := rawlayer.FileStat(path + "-wal")
	if err != nil {
		return "", err
	}
	return stat + " wal " + wal, nil
}

// openOpenVMMParent opens the OpenVMM parent a child recorded as ref,
// found at path, and verifies it (verifyOpenVMM). It is read-only: a
// commit into it is refused.
func openOpenVMMParent(link, path string, ref disklayer.ParentRef, writable bool, restat *string) (disklayer.Layer, error) {
	if writable {
		return nil, fmt.Errorf("%s: an OpenVMM parent is read-only in a hibdisk chain (commit into it is not supported): %w", link, disklayer.ErrReadOnly)
	}
	l, err := openvmmlayer.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", link, err)
	}
	newStat, err := verifyOpenVMM(path, l, ref)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("%s: %w", link, err)
	}
	if newStat != "" && restat != nil {
		*restat = newStat
	}
	return l, nil
}

// verifyOpenVMM checks an OpenVMM parent against what its child recorded,
// as verifyRaw does a raw one: size and sampled digest of its view
// always; its whole view when the file's identity changed, returning the
// new identity when the content still matched.
func verifyOpenVMM(path string, l *openvmmlayer.Layer, ref disklayer.ParentRef) (newStat string, err error) {
	if l.Size() != ref.Size {
		return "", fmt.Errorf("size %d recorded, OpenVMM layer now has %d: %w", ref.Size, l.Size(), disklayer.ErrParentMismatch)
	}
	digest, err := rawlayer.DigestReaderAt(l, l.Size())
	if err != nil {
		return "", err
	}
	if digest != ref.Digest {
		return "", fmt.Errorf("digest %s recorded, OpenVMM layer now has %s: it changed after this layer was made over it; %s: %w", ref.Digest, digest, acceptOpenVMMChange, disklayer.ErrParentMismatch)
	}
	stat, err := openVMMStat(path)
	if err != nil || stat == ref.Stat {
		return "", err
	}
	sum, err := rawlayer.ViewDigest(l)
	if err != nil {
		return "", err
	}
	if sum != ref.SHA256 {
		return "", fmt.Errorf("content %s recorded, OpenVMM layer now has %s (file was %s, is now %s): it changed after this layer was made over it; %s: %w",
			ref.SHA256, sum, ref.Stat, stat, acceptOpenVMMChange, disklayer.ErrParentMismatch)
	}
	return stat, nil
}

// acceptOpenVMMChange says how to accept a changed OpenVMM base.
const acceptOpenVMMChange = "if the change is intended, `hibdisk rebase -u -b FILE -F openvmm LAYER` accepts it"

// checkOpenVMMParent is Check's comparison of an OpenVMM parent's
// content (sqlitelayer.CheckOptions.VerifyRawParent).
func checkOpenVMMParent(path string, ref disklayer.ParentRef) error {
	l, err := openvmmlayer.Open(path)
	if err != nil {
		return err
	}
	defer l.Close()
	_, err = verifyOpenVMM(path, l, ref)
	return err
}

// createOutput's OpenVMM file: sectors of ss bytes, or of src's size when
// ss is 0 (OpenVMM takes every size hibdisk has, any power of two from
// 512; the layers of one OpenVMM stack must agree).
func createOpenVMMOutput(src disklayer.Layer, dst string, ss int) (disklayer.Disk, error) {
	if ss == 0 {
		ss = src.SectorSize()
	}
	if src.Size()%int64(ss) != 0 {
		return nil, fmt.Errorf("source size %d is not a multiple of sector size %d: %w", src.Size(), ss, disklayer.ErrInvalid)
	}
	return openvmmlayer.Create(dst, openvmmlayer.CreateOptions{Size: src.Size(), SectorSize: ss})
}
