package diffdisk

import (
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
)

// ExtraCheck is what another package adds to Check and Repair beyond the
// checks of its tables in one file (those are disklayer.TableChecks, run
// by every check of a layer file, Strict opens included): a check that
// needs the layer's chain (vmm/qemu: the RAM a vm_state row was saved
// with; datastore: entries resolved through the chain), or a repair.
// Either func may be nil. A check runs after the layer check, on a file
// disklayer could open; it reports what it cannot verify (a chain that
// does not open) as a Note, since the layer check reports why.
type ExtraCheck struct {
	Name   string
	Check  func(path string) (*disklayer.Report, error)
	Repair func(path string) (*disklayer.Report, error)
}

var extraChecks []ExtraCheck

// RegisterCheck adds c to every later Check and Repair. Packages call it
// from init.
func RegisterCheck(c ExtraCheck) { extraChecks = append(extraChecks, c) }

// Check is the consistency check of a layer: `hibdisk check`, and what
// tests run on every layer they touched. It runs disklayer.CheckWith on
// the layer at path (the file, its tables and every registered
// disklayer.TableCheck, the parent's identity), also compares a raw
// parent's content digest, which disklayer cannot compute itself, finds
// a chain that loops, and runs the registered extra checks. It reports
// every problem, not just the first; the error is for failing to check
// at all.
//
// The checks of hibfile, datastore and vmm/qemu run where those packages
// are linked in (they register from init), as in cmd/hibdisk; a table
// holding rows that no linked check covers is named in the Notes.
func Check(path string) (*disklayer.Report, error) {
	r, err := disklayer.CheckWith(path, disklayer.CheckOptions{VerifyRawParent: rawDigestMatches})
	if err != nil {
		return r, err
	}
	if loop := chainLoop(path, nil); loop != "" {
		r.Problems = append(r.Problems, fmt.Sprintf("the backing chain loops: %s", loop))
	}
	for _, c := range extraChecks {
		if c.Check == nil {
			continue
		}
		x, err := c.Check(path)
		if err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("%s: %v", c.Name, err))
			continue
		}
		r.Problems = append(r.Problems, x.Problems...)
		r.Notes = append(r.Notes, x.Notes...)
	}
	return r, nil
}

// Repair runs disklayer.RepairWith and the registered extra repairs on
// the layer at path, then checks it again the way Check does, so the
// report covers the raw parent and the extra checks too.
func Repair(path string, opts disklayer.RepairOptions) (*disklayer.Report, error) {
	r, err := disklayer.RepairWith(path, opts)
	if err != nil {
		return r, err
	}
	repairs := r.Repairs
	for _, c := range extraChecks {
		if c.Repair == nil {
			continue
		}
		x, err := c.Repair(path)
		if err != nil {
			return r, err
		}
		repairs = append(repairs, x.Repairs...)
	}
	after, err := Check(path)
	if err != nil {
		return r, err
	}
	after.Repairs = repairs
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
