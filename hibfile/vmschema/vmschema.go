// Package vmschema is the SQL of a QEMU machine's device state in a layer
// database (table vm_state), and the migration that creates it. It is a
// leaf package so that disklayer, which owns the layer's schema history,
// can list the migration without importing vmm/qemu.
//
// Layer schema versions (user_version):
//
//	1  the layer tables of DESIGN.md: layer, sectors, hibernate_blocks
//	2  the hibernate metadata (hibfile/hibschema)
//	3  the datastore (datastore/dsschema)
//	4  vm_state (this package)
//
// A whole-machine snapshot is one layer holding three things: the disk
// (sectors), guest RAM (hibernate_blocks at RAM offsets, stacked through
// the chain like the disk) with its hibernate_snapshot row, and the
// vm_state row below with QEMU's device state stream.
//
// # Invariants
//
//   - At most one vm_state row per layer (id = 1), belonging to the
//     layer's hibernate snapshot (foreign key, deleted with it).
//   - state_digest is the SHA-256 of device_state; ram_digest is the
//     digest of the guest RAM the device state was taken with (see
//     vmm/qemu: SHA-256 over every non-zero 4 KiB page with its offset).
//     QEMU does not notice a device state paired with different RAM, so
//     a resume recomputes both and refuses a mismatch.
package vmschema

import (
	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/store"
)

// Tables is the DDL of the machine state.
const Tables = `
CREATE TABLE vm_state (
  id            INTEGER PRIMARY KEY CHECK (id = 1),
  snapshot_id   INTEGER NOT NULL REFERENCES hibernate_snapshot (snapshot_id) ON DELETE CASCADE,
  qemu_version  TEXT NOT NULL,                -- major.minor.micro of the QEMU that saved it
  qemu_package  TEXT NOT NULL DEFAULT '',     -- distribution build, informational
  machine_type  TEXT NOT NULL,                -- resolved, e.g. pc-i440fx-7.2 (not the alias pc)
  config        TEXT NOT NULL,                -- JSON: what a resume needs to rebuild the command line
  command_line  TEXT NOT NULL,                -- JSON array: the arguments QEMU ran with (informational)
  ram_size      INTEGER NOT NULL,             -- bytes of guest RAM (the memory backend's size)
  ram_digest    TEXT NOT NULL,                -- hex SHA-256 of the RAM the device state belongs to
  device_state  BLOB NOT NULL,                -- QEMU's migration stream without the shared RAM
  state_digest  TEXT NOT NULL,                -- hex SHA-256 of device_state
  saved_at      TEXT NOT NULL                 -- RFC 3339, UTC
);
`

// Version is the layer schema version that has the vm_state table.
const Version = 4

// Migrations follow the datastore in disklayer's schema history:
// Migrations[0] is layer schema version 4.
var Migrations = []store.Migration{
	{Name: "vm_state (QEMU device state of a machine snapshot)", Apply: func(conn *sqlite3.Conn) error { return conn.Exec(Tables) }},
}
