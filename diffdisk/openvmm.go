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
