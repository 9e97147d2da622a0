package disklayer

import (
	"github.com/hibdisk/hibdisk/datastore/dsschema"
	"github.com/hibdisk/hibdisk/hibfile/hibschema"
	"github.com/hibdisk/hibdisk/hibfile/vmschema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// layerMigrations is the layer schema history: version 1 is the layer
// tables (schemaV1), version 2 the hibernate metadata, whose SQL package
// hibfile owns (hibschema), version 3 the datastore (datastore/dsschema),
// version 4 a QEMU machine's device state (hibfile/vmschema), version 5
// layer generations and full parent identities (sqlite_generation.go).
// Opening a layer writable migrates it; each migration runs in its own
// transaction and is recorded in the migrations table (internal/store).
var layerMigrations = append(append(append(append(schemaV1[:len(schemaV1):len(schemaV1)], hibschema.Migrations...), dsschema.Migrations...), vmschema.Migrations...), schemaV5...)

// readableFrom is the oldest version a read-only open accepts without
// migrating: everything after version 1 only adds tables the layer engine
// does not use, so a version 1 layer reads and serves as before. Package
// hibfile reports a version 1 layer as holding no snapshot, or asks for a
// migration when it holds the seed's tables.
const readableFrom = 1

// needsMigration reports whether the layer at path is at an older schema
// version than this build writes (from its header; an unreadable header
// is not a migration matter).
func needsMigration(path string) bool {
	h, err := store.ReadHeader(path)
	return err == nil && int(h.UserVersion) < SchemaVersion && int(h.UserVersion) >= readableFrom
}
