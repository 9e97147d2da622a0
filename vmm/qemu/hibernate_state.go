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
	stmt, _, err := conn.Prepare(`INSERT INTO vm_state
 (id, snapshot_id, qemu_version, qemu_package, machine_type, config, command_line, ram_size, ram_digest, device_state, state_digest, saved_at)
 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)`)
	if err != nil {
		return fmt.Errorf("insert vm_state: %w", err)
	}
	defer stmt.Close()
	stmt.BindInt64(1, s.SnapshotID)
	stmt.BindText(2, s.QEMUVersion)
	stmt.BindText(3, s.QEMUPackage)
	stmt.BindText(4, s.MachineType)
	stmt.BindText(5, string(config))
	stmt.BindText(6, string(cmdline))
	stmt.BindInt64(7, s.RAMSize)
	stmt.BindText(8, s.RAMDigest)
	state := s.DeviceState
	if state == nil {
		state = []byte{} // BindBlob(nil) binds NULL
	}
	stmt.BindBlob(9, state)
	stmt.BindText(10, s.StateDigest)
	stmt.BindText(11, s.SavedAt.UTC().Format(time.RFC3339Nano))
	if err := stmt.Exec(); err != nil {
		return fmt.Errorf("insert vm_state: %w", err)
	}
	return nil
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

const vmStateColumns = `snapshot_id, qemu_version, qemu_package, machine_type, config, command_line,
 ram_size, ram_digest, device_state, state_digest, saved_at`

func selectVMState(conn *sqlite3.Conn) (*VMState, error) {
	stmt, _, err := conn.Prepare(`SELECT ` + vmStateColumns + ` FROM vm_state WHERE id = 1`)
	if err != nil {
		// A layer from before schema version 4 (opened read-only, not
		// migrated) has no vm_state table: it holds no machine state.
		if errors.Is(err, sqlite3.ERROR) {
			return nil, ErrNoVMState
		}
		return nil, err
	}
	defer stmt.Close()
	if !stmt.Step() {
		if err := stmt.Err(); err != nil {
			return nil, err
		}
		return nil, ErrNoVMState
	}
	s, bad := scanVMState(stmt)
	if len(bad) > 0 {
		return nil, fmt.Errorf("%v: %w", bad[0], disklayer.ErrCorrupt)
	}
	return s, stmt.Err()
}

// scanVMState reads a row of vmStateColumns. bad lists the columns that
// do not decode (each as "vm_state COLUMN: why"); their fields stay zero.
func scanVMState(stmt *sqlite3.Stmt) (s *VMState, bad []error) {
	s = &VMState{
		SnapshotID:  stmt.ColumnInt64(0),
		QEMUVersion: stmt.ColumnText(1),
		QEMUPackage: stmt.ColumnText(2),
		MachineType: stmt.ColumnText(3),
		RAMSize:     stmt.ColumnInt64(6),
		RAMDigest:   stmt.ColumnText(7),
		DeviceState: stmt.ColumnBlob(8, nil),
		StateDigest: stmt.ColumnText(9),
	}
	if err := json.Unmarshal([]byte(stmt.ColumnText(4)), &s.Config); err != nil {
		bad = append(bad, fmt.Errorf("vm_state config: %v", err))
	}
	if err := json.Unmarshal([]byte(stmt.ColumnText(5)), &s.CommandLine); err != nil {
		bad = append(bad, fmt.Errorf("vm_state command_line: %v", err))
	}
	var err error
	if s.SavedAt, err = time.Parse(time.RFC3339Nano, stmt.ColumnText(10)); err != nil {
		bad = append(bad, fmt.Errorf("vm_state saved_at: %v", err))
	}
	return s, bad
}
