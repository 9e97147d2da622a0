package sqlitelayer

import (
	"fmt"

	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// needsMigration reports whether the layer at path is at an older schema
// version than this build writes (from its header; an unreadable header
// is not a migration matter).
func needsMigration(path string) bool {
	h, err := store.ReadHeader(path)
	return err == nil && int(h.UserVersion) < SchemaVersion && int(h.UserVersion) >= schema.ReadableFrom
}

// Migrate brings the layer at path up to the schema version this build
// writes (a writable open migrates; this is that open alone) and returns
// the version it had before and has now.
func Migrate(path string) (from, to int, err error) {
	h, err := store.ReadHeader(path)
	if err != nil {
		return 0, 0, fmt.Errorf("migrate %q: %w", path, mapStoreError(err))
	}
	f, err := Open(path, OpenOptions{})
	if err != nil {
		return int(h.UserVersion), int(h.UserVersion), err
	}
	if err := f.Close(); err != nil {
		return int(h.UserVersion), int(h.UserVersion), err
	}
	return int(h.UserVersion), SchemaVersion, nil
}
