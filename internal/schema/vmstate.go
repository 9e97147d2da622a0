// A QEMU machine's device state (schema version VMState): table
// vm_state. A whole-machine snapshot is one layer holding three things:
// the disk (sectors), guest RAM (hibernate_blocks at RAM offsets, stacked
// through the chain like the disk) with its hibernate_snapshot row, and
// the vm_state row below with QEMU's device state stream.
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

package schema

// VMStateTables is the DDL of the machine state.
const VMStateTables = `
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
