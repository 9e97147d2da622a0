package disklayer

import (
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
