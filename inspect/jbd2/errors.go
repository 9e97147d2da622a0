package jbd2

import "errors"

// Errors returned (wrapped) by Replay, tested with errors.Is. Each one
// means the journal was not replayed and the caller sees the filesystem
// as it is on disk.
var (
	// ErrExternalJournal: the filesystem keeps its journal on another
	// device, which Replay does not read.
	ErrExternalJournal = errors.New("external journal device not supported")
	// ErrUnsupported: the journal uses a feature the kernel's recovery
	// would refuse, or one this package does not implement.
	ErrUnsupported = errors.New("unsupported journal")
	// ErrCorrupt: the filesystem's or the journal's own structures are
	// damaged where the kernel would refuse to recover (bad journal
	// superblock or checksum, journal inode blocks missing, a descriptor
	// or revoke block whose checksum fails).
	ErrCorrupt = errors.New("corrupt journal")
)
