package diffdisk

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// ExtraCheck is what another package adds to Check and Repair beyond the
// checks of its tables in one file (those are sqlitelayer.TableChecks, run
// by every check of a layer file, Strict opens included): a check that
// needs the layer's chain (vmm/qemu: the RAM a vm_state row was saved
// with; datastore: entries resolved through the chain), or a repair.
// Either func may be nil. A check runs after the layer check, on a file
// sqlitelayer could open; it reports what it cannot verify (a chain that
// does not open) as a Note, since the layer check reports why.
type ExtraCheck struct {
	Name   string
	Check  func(path string) (*sqlitelayer.Report, error)
	Repair func(path string) (*sqlitelayer.Report, error)
}

var extraChecks []ExtraCheck

// RegisterCheck adds c to every later Check and Repair. Packages call it
// from init.
func RegisterCheck(c ExtraCheck) { extraChecks = append(extraChecks, c) }

// Check is the consistency check of a layer: `hibdisk check`, and what
// tests run on every layer they touched. It runs sqlitelayer.CheckWith on
// the layer at path (the file, its tables and every registered
// sqlitelayer.TableCheck, the parent's identity), also compares a raw
// parent's content digest, which sqlitelayer does not compute itself, finds
// a chain that loops, and runs the registered extra checks. It reports
// every problem, not just the first; the error is for failing to check
// at all.
//
// The checks of hibfile, datastore and vmm/qemu run where those packages
// are linked in (they register from init), as in cmd/hibdisk; a table
// holding rows that no linked check covers is named in the Notes.
func Check(path string) (*sqlitelayer.Report, error) {
	left := Leftovers(path)
	r, err := sqlitelayer.CheckWith(path, sqlitelayer.CheckOptions{VerifyExternalParent: externalParentMatches})
	if err != nil {
		if len(left) > 0 {
			err = fmt.Errorf("%w (an interrupted create, convert or seal left %s beside it: run it again, and remove the leftover)", err, strings.Join(left, ", "))
		}
		return r, err
	}
	for _, l := range left {
		r.Notes = append(r.Notes, fmt.Sprintf("%s is the leftover of an interrupted create, convert or seal of %s: it is not a complete image; remove it", l, filepath.Base(path)))
	}
	if p := sealedParentMismatch(path); p != "" {
		r.Problems = append(r.Problems, p)
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

// Repair runs sqlitelayer.RepairWith and the registered extra repairs on
// the layer at path, then checks it again the way Check does, so the
// report covers the raw parent and the extra checks too.
func Repair(path string, opts sqlitelayer.RepairOptions) (*sqlitelayer.Report, error) {
	r, err := sqlitelayer.RepairWith(path, opts)
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

// sealedParentMismatch compares the file of a hibdisk parent with the
// digest the layer recorded when it was sealed (diffdisk.Seal): a sealed
// layer's identity is its bytes, and uuid and generation cannot tell a
// sealed parent from, say, a copy taken before it was sealed and written
// by hand since. It returns the problem, or "" (also when the layer or
// its parent cannot be read: the layer check reports that).
func sealedParentMismatch(path string) string {
	top, err := TopLayer(path)
	if err != nil || top.Parent == nil || top.Parent.Format != disklayer.FormatHibdisk || top.Parent.SHA256 == "" {
		return ""
	}
	parent := top.Parent.ResolvePath(path)
	digest, _, err := sqlitelayer.FileDigest(parent)
	if err != nil || digest == top.Parent.SHA256 {
		return ""
	}
	return fmt.Sprintf("parent %q has digest %s, this layer was sealed over %s: the parent's file changed since it was sealed (a sealed layer never changes); restore it, or pull the chain again", top.Parent.Path, digest, top.Parent.SHA256)
}

// externalParentMatches checks a parent that is not a hibdisk layer the
// way opening the chain does (verifyRaw, verifyExternal): the sampled
// digest, and the whole content when the files' identity changed since
// the child recorded it.
func externalParentMatches(parentPath string, ref disklayer.ParentRef) error {
	switch ref.Format {
	case disklayer.FormatRaw:
		_, err := verifyRaw(parentPath, ref)
		return err
	case disklayer.FormatS3:
		// Opening it checks the manifest and every layer against it.
		sp, err := openStoreParent(ref, Options{})
		if err == nil {
			err = closeLayers(sp.Layers)
		}
		return err
	}
	l, err := openExternal(parentPath, ref.Format, Options{})
	if err != nil {
		return err
	}
	defer closeLayers([]disklayer.Layer{l})
	_, err = verifyExternal(parentPath, ref, l)
	return err
}

// Leftovers lists the temporary files an interrupted create, convert or
// seal of path left beside it (".NAME.creating-*" from the SQLite layer's
// store, ".NAME.partial-*" from Convert, ".NAME.sealing-*" from Seal), by
// base name.
func Leftovers(path string) []string {
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return nil
	}
	var left []string
	prefix := "." + filepath.Base(path) + "."
	for _, e := range entries {
		name := e.Name()
		if rest, ok := strings.CutPrefix(name, prefix); ok && (strings.HasPrefix(rest, "partial-") || strings.HasPrefix(rest, "creating-") || strings.HasPrefix(rest, "sealing-")) {
			if strings.HasSuffix(name, "-wal") || strings.HasSuffix(name, "-shm") || strings.HasSuffix(name, "-journal") {
				continue
			}
			left = append(left, name)
		}
	}
	return left
}
