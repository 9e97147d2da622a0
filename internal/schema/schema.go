// Package schema is hibdisk's on-disk format: every table a layer database
// holds, the named schema versions, and the one ordered migration history
// that builds a layer from nothing. It sits below every package that reads
// or writes a layer (disklayer/sqlitelayer, hibfile, datastore, vmm/qemu),
// so none of them needs another to know the format.
//
// A layer's user_version is the number of History entries applied to it;
// the migrations table records when each was applied (internal/store).
// Versions never change meaning once released: a layer names its version
// and every later build must read it the same (TestVersionsStableValues).
// The README's version table is checked against History
// (TestReadmeVersionTable).
package schema

import (
	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/store"
)

// The schema versions. Each adds what its name says to the one before.
const (
	// Layer is the layer tables of DESIGN.md: layer, sectors,
	// hibernate_blocks (LayerTables).
	Layer = 1
	// Hibernate adds the hibernate metadata: snapshot, processes, memory
	// map, files, signals and their views (HibernateTables,
	// HibernateViews); it converts the seed's version 0 tables.
	Hibernate = 2
	// Datastore adds the typed datastore (DatastoreTables).
	Datastore = 3
	// VMState adds a QEMU machine's device state (VMStateTables).
	VMState = 4
	// Generations adds the layer's generation and its parent's full
	// identity, for changed-base detection (GenerationColumns).
	Generations = 5
	// ReadCache adds the layer's read_cache flag (ReadCacheColumn).
	ReadCache = 6
	// Allocation adds the allocation summary of a layer that no longer
	// changes (AllocationTables).
	Allocation = 7

	// Current is the version this build writes.
	Current = Allocation
	// ReadableFrom is the oldest version a read-only open accepts
	// without migrating: everything after version 1 only adds what the
	// disk does not need, so a version 1 layer reads and serves as
	// before.
	ReadableFrom = Layer
)

// History is the ordered migration history: History[v-1] takes a layer
// from version v-1 to v. Opening a layer writable applies what it lacks,
// each migration in its own transaction.
var History = []store.Migration{
	Layer - 1:       {Name: "layer schema v1", Apply: exec(LayerTables)},
	Hibernate - 1:   {Name: "hibernate metadata (hibfile v2; converts the seed's v0 tables)", Apply: migrateHibernate},
	Datastore - 1:   {Name: "datastore (typed entries, MAP snapshots, subscriptions)", Apply: exec(DatastoreTables)},
	VMState - 1:     {Name: "vm_state (QEMU device state of a machine snapshot)", Apply: exec(VMStateTables)},
	Generations - 1: {Name: "changed-base detection: layer generation and full parent identity", Apply: exec(GenerationColumns)},
	ReadCache - 1:   {Name: "read_cache: the layer is a read cache of what lies below it", Apply: exec(ReadCacheColumn)},
	Allocation - 1:  {Name: "allocation summary: the runs of data and zero sectors, for layers that no longer change", Apply: exec(AllocationTables)},
}

func exec(sql string) func(*sqlite3.Conn) error {
	return func(conn *sqlite3.Conn) error { return conn.Exec(sql) }
}
