package sqlitelayer

import (
	"fmt"
	"os"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/store"
)

// checkWALBelongs refuses a -wal file that is not this layer's own, as
// left by copying another layer's (or an older copy of this layer's) WAL
// beside it: SQLite applies any WAL whose frames are internally
// consistent, whatever database they came from.
//
// It compares the layer row as the database file alone holds it (an
// immutable read, which ignores the WAL) with the row as SQLite reads it
// through the WAL (info). Every commit that changes content rewrites the
// layer row (the generation), so a WAL holding another layer's content
// names another uuid, and an older WAL of this layer an older generation
// than the file it would overwrite. What this cannot see: a WAL whose
// commits never touched the layer row (another layer's metadata-only
// transactions, or a layer older than schema version 5), which then
// mixes in pages of another database; `hibdisk check` reports what
// integrity_check finds in that case.
//
// It runs before any writable connection opens the layer: a writable
// connection could fold the WAL into the file (a checkpoint) and destroy
// both the evidence and the file. It costs two extra read-only opens,
// only when the WAL is not empty.
func checkWALBelongs(path string) error {
	st, err := os.Stat(path + "-wal")
	if err != nil || st.Size() == 0 {
		return nil
	}
	uri, err := store.FileURI(path, "ro")
	if err != nil {
		return nil
	}
	// Either read failing means this check cannot tell; the open itself
	// then reports what is wrong.
	fileUUID, fileGen, fileV5, err := readIdentity(uri + "&immutable=1")
	if err != nil {
		return nil
	}
	walUUID, walGen, walV5, err := readIdentity(uri)
	if err != nil {
		return nil
	}
	switch {
	case walUUID != fileUUID:
		return fmt.Errorf("%s-wal belongs to another layer: read through it the layer is %s, the file alone is %s. It was copied or left beside this file; move it away (the layer then opens as its file holds it): %w",
			path, walUUID, fileUUID, disklayer.ErrCorrupt)
	case fileV5 && walV5 && walGen < fileGen:
		return fmt.Errorf("%s-wal is older than the file: read through it the layer is at generation %d, the file alone at %d. An old copy of the WAL was put beside a newer file; move it away: %w",
			path, walGen, fileGen, disklayer.ErrCorrupt)
	}
	return nil
}

// readIdentity reads the layer's uuid and generation through a read-only
// connection to uri.
func readIdentity(uri string) (uuid string, generation int64, v5 bool, err error) {
	conn, err := sqlite3.Open(uri)
	if err != nil {
		return "", 0, false, err
	}
	defer conn.Close()
	if v5, err = hasGenerations(conn); err != nil {
		return "", 0, false, err
	}
	sql := "SELECT uuid, 0 FROM layer"
	if v5 {
		sql = "SELECT uuid, generation FROM layer"
	}
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return "", 0, false, err
	}
	defer stmt.Close()
	if !stmt.Step() {
		if err := stmt.Err(); err != nil {
			return "", 0, false, err
		}
		return "", 0, false, fmt.Errorf("no layer row")
	}
	return stmt.ColumnText(0), stmt.ColumnInt64(1), v5, nil
}
