package openvmmlayer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
)

// The DDL OpenVMM executes (schema::DEFINE_TABLE_SECTORS and
// DEFINE_TABLE_METADATA in disklayer_sqlite/src/lib.rs), byte for byte:
// SQLite keeps the text from CREATE to the closing parenthesis, comments
// included, in sqlite_master.sql, so a file Create writes shows the same
// schema as one OpenVMM formatted.
const (
	ddlSectors = `
CREATE TABLE sectors (
    -- if data is NULL, that indicates an all-zero sector.
    -- otherwise, data has len == SECTOR_SIZE, containing the sector data.
    sector INTEGER NOT NULL,
    data   BLOB,
    PRIMARY KEY (sector)
)
`
	ddlMeta = `
CREATE TABLE meta (
    metadata TEXT NOT NULL -- stored as JSON
)
`
)

// maxSize bounds a layer's size, as for hibdisk layers: offsets stay far
// from int64 overflow.
const maxSize = 1 << 60

// Info is the layer's meta row.
type Info struct {
	// LogicallyReadOnly marks a layer OpenVMM only reads through (a
	// cache layer).
	LogicallyReadOnly bool
	SectorCount       int64
	SectorSize        int
}

// Size is the number of bytes the guest sees.
func (i Info) Size() int64 { return i.SectorCount * int64(i.SectorSize) }

// meta is the JSON of the meta row. The field order is serde's order of
// OpenVMM's DiskMeta struct, which encoding/json keeps.
type meta struct {
	LogicallyReadOnly *bool   `json:"logically_read_only"`
	SectorCount       *uint64 `json:"sector_count"`
	SectorSize        *uint32 `json:"sector_size"`
}

// metaJSON is the meta row's text for info, as OpenVMM writes it
// (serde_json::to_string, then SQLite's json(), which keeps it as is).
func metaJSON(info Info) string {
	ro, count, size := info.LogicallyReadOnly, uint64(info.SectorCount), uint32(info.SectorSize)
	b, _ := json.Marshal(meta{&ro, &count, &size}) // cannot fail: three plain fields
	return string(b)
}

// parseMeta decodes and validates the meta row's text. Unknown fields
// are ignored, as serde does; the three known ones are required.
func parseMeta(text string) (Info, error) {
	var m meta
	dec := json.NewDecoder(bytes.NewReader([]byte(text)))
	if err := dec.Decode(&m); err != nil {
		return Info{}, fmt.Errorf("metadata %q is not the JSON OpenVMM writes: %v", text, err)
	}
	if dec.More() {
		return Info{}, fmt.Errorf("metadata %q has text after its JSON object", text)
	}
	if m.LogicallyReadOnly == nil || m.SectorCount == nil || m.SectorSize == nil {
		return Info{}, fmt.Errorf("metadata %q lacks logically_read_only, sector_count or sector_size", text)
	}
	info := Info{LogicallyReadOnly: *m.LogicallyReadOnly, SectorSize: int(*m.SectorSize)}
	if !disklayer.ValidSectorSize(info.SectorSize) {
		return Info{}, fmt.Errorf("sector_size %d is not a power of two in [%d, %d]", *m.SectorSize, disklayer.MinSectorSize, disklayer.MaxSectorSize)
	}
	if *m.SectorCount > maxSize/uint64(info.SectorSize) {
		return Info{}, fmt.Errorf("sector_count %d of %d bytes is past the %d-byte limit", *m.SectorCount, info.SectorSize, int64(maxSize))
	}
	info.SectorCount = int64(*m.SectorCount)
	return info, nil
}

// readMeta reads and validates the meta row.
func readMeta(conn *sqlite3.Conn) (Info, error) {
	stmt, _, err := conn.Prepare("SELECT metadata FROM meta LIMIT 2")
	if err != nil {
		return Info{}, fmt.Errorf("no meta table (%v): %w", err, disklayer.ErrNotLayer)
	}
	defer stmt.Close()
	var texts []string
	for stmt.Step() {
		texts = append(texts, stmt.ColumnText(0))
	}
	if err := stmt.Err(); err != nil {
		return Info{}, fmt.Errorf("read the meta table: %w", mapError(err))
	}
	if len(texts) != 1 {
		return Info{}, fmt.Errorf("the meta table has %s, want exactly one: %w", rowCount(len(texts)), disklayer.ErrCorrupt)
	}
	info, err := parseMeta(texts[0])
	if err != nil {
		return Info{}, fmt.Errorf("%w: %w", err, disklayer.ErrCorrupt)
	}
	return info, nil
}

func rowCount(n int) string {
	switch n {
	case 0:
		return "no row"
	case 1:
		return "one row"
	}
	return "more than one row"
}

// checkSectorRange refuses rows outside [0, sector_count): OpenVMM never
// writes them, and a reader would drop them silently. The rowid b-tree
// answers min and max without a scan.
func checkSectorRange(conn *sqlite3.Conn, info Info) error {
	stmt, _, err := conn.Prepare("SELECT min(sector), max(sector) FROM sectors")
	if err != nil {
		return fmt.Errorf("no sectors table (%v): %w", err, disklayer.ErrNotLayer)
	}
	defer stmt.Close()
	if !stmt.Step() {
		return fmt.Errorf("read the sectors table: %w", mapError(stmt.Err()))
	}
	if stmt.ColumnType(0) == sqlite3.NULL {
		return nil // no rows
	}
	lo, hi := stmt.ColumnInt64(0), stmt.ColumnInt64(1)
	if stmt.ColumnType(0) != sqlite3.INTEGER || stmt.ColumnType(1) != sqlite3.INTEGER || lo < 0 || hi >= info.SectorCount {
		return fmt.Errorf("sectors table holds sectors %s..%s, outside the %d sectors of its meta row: %w",
			stmt.ColumnText(0), stmt.ColumnText(1), info.SectorCount, disklayer.ErrCorrupt)
	}
	return nil
}

// mapError gives SQLite's errors the contract's sentinels.
func mapError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sqlite3.NOTADB):
		return fmt.Errorf("%w: %w", err, disklayer.ErrNotLayer)
	case errors.Is(err, sqlite3.CORRUPT):
		return fmt.Errorf("%w: %w", err, disklayer.ErrCorrupt)
	case errors.Is(err, sqlite3.FULL):
		return fmt.Errorf("%w: %w", err, disklayer.ErrNoSpace)
	}
	return err
}
