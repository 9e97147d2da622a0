package qemu

import (
	"errors"
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

// The checks of a machine snapshot's vm_state row (schema in internal/schema),
// registered so that every check of a layer runs them. They verify what
// Resume verifies before it starts QEMU, except what depends on the QEMU
// binary (its version, its machine types):
//
//   - in the layer file (a sqlitelayer.TableCheck, so also on a Strict
//     open): the row belongs to a hibernate snapshot of the layer (no
//     orphan); config, command_line and saved_at decode; the device
//     state matches state_digest; ram_size is the configured RAM and fits
//     a machine snapshot; machine_type is the configuration's; the QEMU
//     version is major.minor.micro; ram_digest is a RAM digest (a
//     SHA-256 in hex, plain or after "pages:");
//   - through the chain (a diffdisk check, `hibdisk check`): the row
//     belongs to the layer's newest snapshot, a QEMU one, and the RAM
//     that snapshot stores in the chain's hibernate file has ram_digest
//     (reading all of it, as a resume does).
func init() {
	sqlitelayer.RegisterTableCheck(sqlitelayer.TableCheck{Name: "vm_state", Tables: []string{"vm_state"}, Check: checkVMStateTable})
	diffdisk.RegisterCheck(diffdisk.ExtraCheck{Name: "vm_state", Check: checkVMStateRAM})
}

func checkVMStateTable(conn *sqlite3.Conn, _ sqlitelayer.Info, r *sqlitelayer.TableReport) error {
	orphans, err := hibfile.OrphanMachineStates(conn)
	if err != nil {
		return err
	}
	for _, id := range orphans {
		r.Problemf("the row belongs to snapshot %d, which the layer does not hold (an orphan)", id)
	}
	rows, err := hibfile.MachineStates(conn)
	if err != nil {
		return err
	}
	for _, row := range rows {
		s, bad := decodeVMState(row)
		for _, err := range bad {
			r.Problemf("%v", err)
		}
		if len(bad) > 0 {
			// A field that does not decode would be reported again
			// below as a mismatch with its zero value.
			continue
		}
		for _, err := range stateProblems(s) {
			r.Problemf("%v", err)
		}
		if !validDigest(s.RAMDigest) {
			r.Problemf("ram_digest %q is not a RAM digest (a hex SHA-256, or %q and one)", s.RAMDigest, pageDigestPrefix)
		}
	}
	return nil
}

// checkVMStateRAM checks a vm_state row against the chain: the snapshot
// it belongs to and the RAM that snapshot stores.
func checkVMStateRAM(path string) (*sqlitelayer.Report, error) {
	r := &sqlitelayer.Report{Path: path}
	note := func(format string, args ...any) {
		r.Notes = append(r.Notes, "vm_state: RAM digest not verified: "+fmt.Sprintf(format, args...))
	}
	s, err := ReadVMState(path)
	switch {
	case errors.Is(err, ErrNoVMState):
		return r, nil
	case errors.Is(err, disklayer.ErrCorrupt):
		note("the row does not decode (see the vm_state problems)")
		return r, nil
	case err != nil:
		return r, err
	}
	if s.RAMSize <= 0 || s.RAMSize > maxRAMBytes {
		note("ram_size %d is not a machine snapshot's", s.RAMSize)
		return r, nil
	}
	chain, err := hibfile.Open(path)
	if err != nil {
		note("%v", err)
		return r, nil
	}
	defer chain.Close()
	view, err := chain.Latest()
	if err != nil && !errors.Is(err, hibfile.ErrNoSnapshot) {
		note("%v", err)
		return r, nil
	}
	if err != nil || view.LayerDepth() != 0 {
		note("the layer holds no snapshot of its own (see the vm_state problems)")
		return r, nil
	}
	if err := snapshotBinding(s, view.Snapshot()); err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("vm_state: %v", err))
		return r, nil
	}
	if f := view.Snapshot().BlobFilePath; f != "" {
		note("the snapshot's RAM is in the external file %q", f)
		return r, nil
	}
	if _, err := verifyRAM(view, s, nil); err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("vm_state: %v", err))
	}
	return r, nil
}
