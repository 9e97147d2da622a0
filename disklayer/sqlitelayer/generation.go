package sqlitelayer

import (
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Generations (schema version schema.Generations; the DDL and what it
// means are in internal/schema): the engine bumps a layer's generation
// once per committing transaction that changed content (commitLocked), in
// that transaction, so a crash cannot separate a change from its bump.
// Content is everything a child sees through the chain: sectors,
// hibernate blocks, the size, and what File.Update commits (hibernate
// metadata, datastore entries).
// Transactions that change only the label, the read-only flag or the
// parent reference leave it alone, so naming or sealing a base does not
// orphan its children. The engine turns triggers off on its own
// connection (SQLITE_DBCONFIG_ENABLE_TRIGGER): the schema's triggers,
// which bump the generation once per changed row for every other SQL
// client, would cost its writes one bump per row instead of one per
// commit.

// hasGenerations reports whether the layer's schema has the generation
// columns (a read-only open does not migrate an older layer).
func hasGenerations(conn *sqlite3.Conn) (bool, error) {
	v, err := store.PragmaInt(conn, "user_version")
	if err != nil {
		return false, err
	}
	return v >= schema.Generations, nil
}

// hasReadCache reports whether the layer's schema has the read_cache
// column (version schema.ReadCache).
func hasReadCache(conn *sqlite3.Conn) (bool, error) {
	v, err := store.PragmaInt(conn, "user_version")
	if err != nil {
		return false, err
	}
	return v >= schema.ReadCache, nil
}

// prepareGenerations readies a writable engine to bump its layer's
// generation: its own writes stop firing the per-row triggers, and
// commitLocked runs bumpGen once per content-changing transaction.
func (e *engine) prepareGenerations() error {
	if _, err := e.conn.Config(sqlite3.DBCONFIG_ENABLE_TRIGGER, false); err != nil {
		return fmt.Errorf("turn off triggers: %w", err)
	}
	stmt, _, err := e.conn.Prepare("UPDATE layer SET generation = generation + 1 RETURNING generation")
	if err != nil {
		return fmt.Errorf("prepare generation bump: %w", err)
	}
	e.bumpGen = stmt
	return nil
}

// bumpGenerationLocked bumps the generation inside the open write
// transaction when it changed content, and returns the new value (0 when
// nothing was bumped). The caller publishes it after COMMIT succeeds.
func (e *engine) bumpGenerationLocked() (int64, error) {
	if !e.writeTx || !e.contentChanged || e.bumpGen == nil {
		return 0, nil
	}
	return e.bumpGenerationInTx()
}

// bumpGenerationInTx bumps the generation inside whatever write
// transaction the connection has open, and returns the new value.
func (e *engine) bumpGenerationInTx() (int64, error) {
	defer e.bumpGen.Reset()
	if !e.bumpGen.Step() {
		if err := e.bumpGen.Err(); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("generation bump: the layer table has no row: %w", disklayer.ErrCorrupt)
	}
	gen := e.bumpGen.ColumnInt64(0)
	for e.bumpGen.Step() {
	}
	return gen, e.bumpGen.Err()
}
