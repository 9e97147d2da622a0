package disklayer

import (
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/store"
)

// A layer's generation counts the transactions that changed its content
// (sectors, hibernate blocks, size). A child records its hibdisk parent's
// uuid and generation when it is attached, and a chain refuses to open
// over a parent whose generation moved: a base changed in place after a
// child was made is caught, not mixed into the child's view.
//
// Who bumps it:
//   - the layer engine, once per committing transaction that changed
//     content (commitLocked), in that transaction: a crash cannot separate
//     the change from its bump. Transactions that change only the label,
//     the read-only flag or the parent reference leave it alone, so
//     naming or sealing a base does not orphan its children.
//   - triggers on sectors and hibernate_blocks, once per changed row, for
//     every other SQLite client (the sqlite3 shell, scripts). The engine
//     turns triggers off on its own connection (SQLITE_DBCONFIG_ENABLE_TRIGGER)
//     so that its writes pay for one bump per commit, not one per row.
//
// Generations start at 1; 0 in a child's parent_generation means "not
// recorded" (layers made before schema version 5), and such links are
// checked by uuid and size alone.
//
// The same migration records a raw parent's identity beyond the sampled
// digest: parent_sha256 is a digest of the whole content (computed when
// the child is attached), parent_stat the file's inode, size and times then
// (see rawlayer.ContentDigest and rawlayer.FileStat).
var schemaV5 = []store.Migration{{
	Name: "changed-base detection: layer generation and full parent identity",
	Apply: func(conn *sqlite3.Conn) error {
		return conn.Exec(`
ALTER TABLE layer ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE layer ADD COLUMN parent_generation INTEGER;
ALTER TABLE layer ADD COLUMN parent_sha256 TEXT;
ALTER TABLE layer ADD COLUMN parent_stat TEXT;
CREATE TRIGGER sectors_insert_generation AFTER INSERT ON sectors BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER sectors_update_generation AFTER UPDATE ON sectors BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER sectors_delete_generation AFTER DELETE ON sectors BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER hibernate_blocks_insert_generation AFTER INSERT ON hibernate_blocks BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER hibernate_blocks_update_generation AFTER UPDATE ON hibernate_blocks BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER hibernate_blocks_delete_generation AFTER DELETE ON hibernate_blocks BEGIN UPDATE layer SET generation = generation + 1; END;
CREATE TRIGGER layer_size_generation AFTER UPDATE OF sector_size, disk_size ON layer BEGIN UPDATE layer SET generation = generation + 1; END;
`)
	},
}}

// generationVersion is the first schema version with generations.
const generationVersion = 5

// hasGenerations reports whether the layer's schema has the generation
// columns (a read-only open does not migrate an older layer).
func hasGenerations(conn *sqlite3.Conn) (bool, error) {
	v, err := store.PragmaInt(conn, "user_version")
	if err != nil {
		return false, err
	}
	return v >= generationVersion, nil
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
		return 0, fmt.Errorf("generation bump: the layer table has no row: %w", ErrCorrupt)
	}
	gen := e.bumpGen.ColumnInt64(0)
	for e.bumpGen.Step() {
	}
	return gen, e.bumpGen.Err()
}
