package sqlitelayer

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/store"
)

// The SQLite layer has no sentinel errors of its own: it returns the
// contract's (package disklayer, errors.go). mapStoreError is where the
// engine's errors (internal/store, SQLite, the filesystem) become them.

// mapStoreError translates store and SQLite errors to the layer sentinels,
// keeping the original text.
func mapStoreError(err error) error {
	switch {
	case errors.Is(err, store.ErrNotSQLite), errors.Is(err, store.ErrOtherApplication), errors.Is(err, sqlite3.NOTADB):
		return fmt.Errorf("%w: %w", err, disklayer.ErrNotLayer)
	case errors.Is(err, store.ErrNewerSchema):
		return fmt.Errorf("%w: %w", err, disklayer.ErrUnsupportedVersion)
	case errors.Is(err, sqlite3.CORRUPT):
		return fmt.Errorf("%w: %w", err, disklayer.ErrCorrupt)
	case errors.Is(err, sqlite3.FULL), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%w: %w", err, disklayer.ErrNoSpace)
	case errors.Is(err, store.ErrWAL):
		return fmt.Errorf("%w: %w", err, disklayer.ErrInvalid)
	case errors.Is(err, store.ErrNeedsMigration):
		// The two sentinels have one text: keep it once.
		return alsoIs{err, disklayer.ErrNeedsMigration}
	}
	return err
}

// alsoIs is err, whose text it keeps, with target added to its chain.
type alsoIs struct{ err, target error }

func (e alsoIs) Error() string { return e.err.Error() }

func (e alsoIs) Unwrap() []error { return []error{e.err, e.target} }

// fileError names the layer file an open or create failed on
// (disklayer.FileError).
func fileError(op, path string, err error) error {
	return &disklayer.FileError{Op: op, Path: path, Err: err}
}
