package qemu

import "errors"

// Errors, grouped by when they happen; wrapped with the operation.
var (
	// Running a machine.

	// ErrExited is returned by WaitLine when QEMU exits before a
	// matching line.
	ErrExited = errors.New("qemu: exited")
	// ErrQMPClosed is returned for commands on a connection that has
	// ended (QEMU exited or Close was called).
	ErrQMPClosed = errors.New("qmp: connection closed")
	// ErrMachineGone: `vm hibernate` found the state file of a machine
	// whose supervising process died without removing it.
	ErrMachineGone = errors.New("machine gone")

	// Resuming a machine snapshot.

	// ErrNoVMState: the layer holds no vm_state row (not a machine
	// snapshot, or a hibernate that did not complete).
	ErrNoVMState = errors.New("no QEMU machine state (vm_state) in the layer")
	// ErrStateMismatch: a machine snapshot cannot be resumed as
	// recorded: its device state does not match its digest, its RAM does
	// not match the digest the device state was saved with, or this QEMU
	// is not the version or lacks the machine type that saved it. QEMU
	// itself would not notice a device state paired with the wrong RAM
	// (the guest crashes or runs from the wrong point), so Resume refuses
	// instead.
	ErrStateMismatch = errors.New("machine snapshot does not match")
)
