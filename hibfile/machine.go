package hibfile

import (
	"errors"
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/schema"
)

// MachineState is a layer's vm_state row (schema version VMState in
// internal/schema): the device state of the QEMU machine whose RAM is the
// layer's hibernate snapshot. hibfile owns the table and its SQL;
// vmm/qemu gives the row its meaning (Config and CommandLine are its
// JSON, the digests its rules).
type MachineState struct {
	SnapshotID  int64
	QEMUVersion string
	QEMUPackage string
	MachineType string
	Config      string // JSON
	CommandLine string // JSON
	RAMSize     int64
	RAMDigest   string
	DeviceState []byte
	StateDigest string
	SavedAt     string // RFC 3339 with nanoseconds, UTC
}

// ErrNoMachineState: the layer holds no vm_state row (or, opened
// read-only before schema version VMState, no vm_state table).
var ErrNoMachineState = errors.New("no machine state (vm_state) in the layer")

const machineStateColumns = `snapshot_id, qemu_version, qemu_package, machine_type, config, command_line,
 ram_size, ram_digest, device_state, state_digest, saved_at`

// PutMachineState inserts the layer's vm_state row on conn, inside the
// transaction that saves its snapshot (SaveChain's hook: tx.Conn()).
func PutMachineState(conn *sqlite3.Conn, s MachineState) error {
	stmt, _, err := conn.Prepare(`INSERT INTO vm_state (id, ` + machineStateColumns + `)
 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)`)
	if err != nil {
		return fmt.Errorf("insert vm_state: %w", err)
	}
	defer stmt.Close()
	stmt.BindInt64(1, s.SnapshotID)
	stmt.BindText(2, s.QEMUVersion)
	stmt.BindText(3, s.QEMUPackage)
	stmt.BindText(4, s.MachineType)
	stmt.BindText(5, s.Config)
	stmt.BindText(6, s.CommandLine)
	stmt.BindInt64(7, s.RAMSize)
	stmt.BindText(8, s.RAMDigest)
	state := s.DeviceState
	if state == nil {
		state = []byte{} // BindBlob(nil) binds NULL
	}
	stmt.BindBlob(9, state)
	stmt.BindText(10, s.StateDigest)
	stmt.BindText(11, s.SavedAt)
	if err := stmt.Exec(); err != nil {
		return fmt.Errorf("insert vm_state: %w", err)
	}
	return nil
}

// ReadMachineState reads the layer's vm_state row on conn
// (ErrNoMachineState when there is none).
func ReadMachineState(conn *sqlite3.Conn) (MachineState, error) {
	rows, err := machineStates(conn, ` WHERE id = 1`)
	if err != nil {
		return MachineState{}, err
	}
	if len(rows) == 0 {
		return MachineState{}, ErrNoMachineState
	}
	return rows[0], nil
}

// MachineStates returns every vm_state row on conn (at most one in a
// healthy layer), for checks; none when the table does not exist.
func MachineStates(conn *sqlite3.Conn) ([]MachineState, error) {
	rows, err := machineStates(conn, ` ORDER BY id`)
	if errors.Is(err, ErrNoMachineState) {
		return nil, nil
	}
	return rows, err
}

func machineStates(conn *sqlite3.Conn, where string) ([]MachineState, error) {
	has, err := schema.TableExists(conn, "vm_state")
	if err != nil {
		return nil, err
	}
	if !has {
		return nil, ErrNoMachineState // a layer older than schema version 4, opened read-only
	}
	stmt, _, err := conn.Prepare(`SELECT ` + machineStateColumns + ` FROM vm_state` + where)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	var rows []MachineState
	for stmt.Step() {
		rows = append(rows, MachineState{
			SnapshotID:  stmt.ColumnInt64(0),
			QEMUVersion: stmt.ColumnText(1),
			QEMUPackage: stmt.ColumnText(2),
			MachineType: stmt.ColumnText(3),
			Config:      stmt.ColumnText(4),
			CommandLine: stmt.ColumnText(5),
			RAMSize:     stmt.ColumnInt64(6),
			RAMDigest:   stmt.ColumnText(7),
			DeviceState: stmt.ColumnBlob(8, nil),
			StateDigest: stmt.ColumnText(9),
			SavedAt:     stmt.ColumnText(10),
		})
	}
	return rows, stmt.Err()
}

// OrphanMachineStates lists the snapshot ids of vm_state rows whose
// snapshot the layer does not hold.
func OrphanMachineStates(conn *sqlite3.Conn) ([]int64, error) {
	if has, err := schema.TableExists(conn, "vm_state"); err != nil || !has {
		return nil, err
	}
	stmt, _, err := conn.Prepare(`SELECT v.snapshot_id FROM vm_state v WHERE NOT EXISTS
 (SELECT 1 FROM hibernate_snapshot s WHERE s.snapshot_id = v.snapshot_id)`)
	if err != nil {
		return nil, err
	}
	defer stmt.Close()
	var ids []int64
	for stmt.Step() {
		ids = append(ids, stmt.ColumnInt64(0))
	}
	return ids, stmt.Err()
}
