package diffdisk

import (
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
)

// Check runs disklayer.Check on the layer at path (`hibdisk check`), and
// also compares a raw parent's content digest, which disklayer cannot
// compute itself.
func Check(path string) (*disklayer.Report, error) {
	return disklayer.CheckWith(path, disklayer.CheckOptions{VerifyRawParent: rawDigestMatches})
}

// Repair runs disklayer.Repair on the layer at path, then checks it again
// the way Check does, so the report covers the raw parent too.
func Repair(path string) (*disklayer.Report, error) {
	r, err := disklayer.Repair(path)
	if err != nil {
		return r, err
	}
	after, err := Check(path)
	if err != nil {
		return r, err
	}
	after.Repairs = r.Repairs
	return after, nil
}

// rawDigestMatches compares a raw parent's current digest with the one its
// child recorded.
func rawDigestMatches(parentPath string, ref disklayer.ParentRef) error {
	got, err := rawlayer.Digest(parentPath)
	if err != nil {
		return err
	}
	if got != ref.Digest {
		return fmt.Errorf("digest %s recorded, file now has %s: %w", ref.Digest, got, disklayer.ErrParentMismatch)
	}
	return nil
}
