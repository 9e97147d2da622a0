package qemu

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

// SavedDisk is one disk of a machine snapshot's configuration.
type SavedDisk struct {
	Name string `json:"name"`
	// Path is "" for the snapshot disk (the layer holding the snapshot,
	// resumed on a new diff layer over it); for other disks (read-only)
	// the top layer's path, relative to the snapshot layer's directory
	// unless absolute.
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
	Boot     bool   `json:"boot"`
}

// SavedConfig is what a resume needs to rebuild the command line: the
// machine without its sockets, RAM file and layers, which are new on
// every resume.
type SavedConfig struct {
	Accel       string      `json:"accel"`
	MachineType string      `json:"machine_type"`
	MemoryMiB   int         `json:"memory_mib"`
	CPUs        int         `json:"cpus"`
	Kernel      string      `json:"kernel,omitempty"`
	Initrd      string      `json:"initrd,omitempty"`
	Append      string      `json:"append,omitempty"`
	Disks       []SavedDisk `json:"disks"`
	ExtraArgs   []string    `json:"extra_args,omitempty"`
}

// VMState is a layer's vm_state row (schema in internal/schema).
type VMState struct {
	SnapshotID  int64
	QEMUVersion string // major.minor.micro
	QEMUPackage string
	MachineType string // resolved: pc-i440fx-7.2, not pc
	Config      SavedConfig
	CommandLine []string
	RAMSize     int64
	RAMDigest   string
	DeviceState []byte
	StateDigest string
	SavedAt     time.Time
}

func digestBytes(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// insertVMState writes the vm_state row in a layer's transaction.
func insertVMState(conn *sqlite3.Conn, s *VMState) error {
	config, err := json.Marshal(s.Config)
	if err != nil {
		return err
	}
	cmdline, err := json.Marshal(s.CommandLine)
	if err != nil {
		return err
	}
	return hibfile.PutMachineState(conn, hibfile.MachineState{
		SnapshotID: s.SnapshotID, QEMUVersion: s.QEMUVersion, QEMUPackage: s.QEMUPackage,
		MachineType: s.MachineType, Config: string(config), CommandLine: string(cmdline),
		RAMSize: s.RAMSize, RAMDigest: s.RAMDigest, DeviceState: s.DeviceState,
		StateDigest: s.StateDigest, SavedAt: s.SavedAt.UTC().Format(time.RFC3339Nano),
	})
}

// ReadVMState reads the vm_state row of the layer at path (that layer
// only, opened read-only). It does not verify the digests: Resume does.
func ReadVMState(path string) (*VMState, error) {
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("read vm_state of %q: %w", path, err)
	}
	defer f.Close()
	var s *VMState
	err = f.View("read vm_state", func(conn *sqlite3.Conn) error {
		var err error
		s, err = selectVMState(conn)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read vm_state of %q: %w", path, err)
	}
	return s, nil
}

func selectVMState(conn *sqlite3.Conn) (*VMState, error) {
	row, err := hibfile.ReadMachineState(conn)
	if errors.Is(err, hibfile.ErrNoMachineState) {
		return nil, ErrNoVMState
	}
	if err != nil {
		return nil, err
	}
	s, bad := decodeVMState(row)
	if len(bad) > 0 {
		return nil, fmt.Errorf("%v: %w", bad[0], disklayer.ErrCorrupt)
	}
	return s, nil
}

// decodeVMState gives a vm_state row its meaning. bad lists the columns
// that do not decode (each as "vm_state COLUMN: why"); their fields stay
// zero.
func decodeVMState(row hibfile.MachineState) (s *VMState, bad []error) {
	s = &VMState{
		SnapshotID:  row.SnapshotID,
		QEMUVersion: row.QEMUVersion,
		QEMUPackage: row.QEMUPackage,
		MachineType: row.MachineType,
		RAMSize:     row.RAMSize,
		RAMDigest:   row.RAMDigest,
		DeviceState: row.DeviceState,
		StateDigest: row.StateDigest,
	}
	if err := json.Unmarshal([]byte(row.Config), &s.Config); err != nil {
		bad = append(bad, fmt.Errorf("vm_state config: %v", err))
	}
	if err := json.Unmarshal([]byte(row.CommandLine), &s.CommandLine); err != nil {
		bad = append(bad, fmt.Errorf("vm_state command_line: %v", err))
	}
	var err error
	if s.SavedAt, err = time.Parse(time.RFC3339Nano, row.SavedAt); err != nil {
		bad = append(bad, fmt.Errorf("vm_state saved_at: %v", err))
	}
	return s, bad
}
