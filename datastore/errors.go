package datastore

import "errors"

// Sentinel errors, wrapped with the operation and the key. Bad arguments
// (a key of the wrong length, an unknown type, a pattern that does not
// compile, a MAP range outside its file) wrap disklayer.ErrInvalid; a
// read-only chain refuses changes with disklayer.ErrReadOnly.
var (
	// ErrNotFound: no such entry, snapshot or subscription (MINIX ESRCH).
	ErrNotFound = errors.New("no such entry")
	// ErrExists: publishing an existing entry without Overwrite, any MAP
	// again, a label number another label holds, or subscribing twice
	// without Overwrite (MINIX EEXIST).
	ErrExists = errors.New("entry exists")
	// ErrPermission: another owner's private entry, or deleting another
	// owner's entry (MINIX EPERM).
	ErrPermission = errors.New("permission denied")
	// ErrTooSmall: a STRING longer than the retrieve's length bound.
	ErrTooSmall = errors.New("buffer too small")
)
