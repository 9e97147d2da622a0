package qemu

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/internal/checktest"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

// savedMachine makes what Hibernate makes, without QEMU: a layer in dir
// holding a machine snapshot of 1 MiB of RAM (a few non-zero pages) and
// its vm_state row, committed together as Hibernate commits them.
func savedMachine(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "snap.db")
	if err := diffdisk.Create(path, diffdisk.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	const ramSize = 1 << 20
	img := &hibfile.MemoryImage{}
	img.Put(0x3000, bytes.Repeat([]byte{7}, pageSize))
	img.Put(0x80000, bytes.Repeat([]byte{9}, 2*pageSize))
	ram := make([]byte, ramSize)
	img.ReadAt(ram, 0)
	digest := newStreamDigest() // the older form: check verifies it still
	digest.add(ram, 0)
	state := []byte("QEVM device state")
	vm := &VMState{
		QEMUVersion: "7.2.22", MachineType: "pc-i440fx-7.2",
		Config:      SavedConfig{Accel: "tcg", MachineType: "pc-i440fx-7.2", MemoryMiB: 1, CPUs: 1, Disks: []SavedDisk{{Name: "root", Boot: true}}},
		CommandLine: []string{"-m", "1"}, RAMSize: ramSize, RAMDigest: digest.hex(),
		DeviceState: state, StateDigest: digestBytes(state), SavedAt: time.Now(),
	}
	chain, err := diffdisk.Open(path, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer chain.Close()
	_, err = hibfile.SaveChain(chain, machineSnapshot(ramSize, ramSize, vm.MachineType, ""), img, func(tx *sqlitelayer.Tx, id int64) error {
		vm.SnapshotID = id
		return insertVMState(tx.Conn(), vm)
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCheckMachineSnapshot: a machine snapshot checks clean, with its
// RAM digest verified (no note says otherwise).
func TestCheckMachineSnapshot(t *testing.T) {
	path := savedMachine(t, checktest.TempDir(t))
	r, err := diffdisk.Check(path)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK() || len(r.Notes) > 0 {
		t.Errorf("healthy machine snapshot:\n%s", r)
	}
}

// TestCheckDamagedVMState damages a machine snapshot the ways Resume
// refuses (and a few it would fail on), one layer each, and wants the
// check to name each.
func TestCheckDamagedVMState(t *testing.T) {
	for _, tc := range []struct {
		name string
		sql  []string
		want []string
	}{
		{"device state", []string{"UPDATE vm_state SET device_state = x'00'"}, []string{"vm_state: device state (1 bytes) has digest"}},
		{"ram digest", []string{"UPDATE vm_state SET ram_digest = '" + strings.Repeat("0", 64) + "'"},
			[]string{"vm_state: the RAM in the chain's hibernate file has digest"}},
		{"ram", []string{"UPDATE hibernate_blocks SET data = randomblob(length(data)) WHERE block = (SELECT max(block) FROM hibernate_blocks WHERE data IS NOT NULL)"},
			[]string{"vm_state: the RAM in the chain's hibernate file has digest"}},
		{"config", []string{"UPDATE vm_state SET config = '{'"}, []string{"vm_state: vm_state config: unexpected end of JSON input"}},
		{"ram size", []string{"UPDATE vm_state SET ram_size = 2 << 20"}, []string{"vm_state: vm_state RAM size 2097152 does not match 1 MiB"}},
		{"orphan", []string{"PRAGMA foreign_keys = OFF", "UPDATE vm_state SET snapshot_id = 99"},
			[]string{"vm_state: the row belongs to snapshot 99, which the layer does not hold"}},
		{"not a machine", []string{"UPDATE hibernate_snapshot SET source = 'linux'"}, []string{"vm_state: the snapshot is from \"linux\", not a QEMU machine"}},
		// Several at once: every one is reported.
		{"all at once", []string{
			"UPDATE vm_state SET device_state = x'00', machine_type = 'pc-q35-7.2', qemu_version = '7.2', ram_digest = 'xyz'",
		}, []string{"device state (1 bytes)", `machine type "pc-q35-7.2", but the config says "pc-i440fx-7.2"`, `QEMU version "7.2"`, `ram_digest "xyz" is not a RAM digest`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := savedMachine(t, checktest.TempDir(t))
			storetest.Exec(t, path, tc.sql...)
			checktest.Damaged(t, path, tc.want...)
			r, err := diffdisk.Check(path)
			if err != nil {
				t.Fatal(err)
			}
			all := strings.Join(r.Problems, "\n")
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("check does not report %q; it says:\n%s", w, r)
				}
			}
		})
	}
}
