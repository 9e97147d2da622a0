package sqlitelayer

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
)

// validateParent checks a parent reference before it is stored in the
// layer row.
func validateParent(r disklayer.ParentRef) error {
	switch {
	case r.Path == "":
		return errors.New("parent path is empty")
	case r.Size < 0:
		return fmt.Errorf("parent size %d is negative", r.Size)
	case r.Format == disklayer.FormatHibdisk && r.UUID == "":
		return errors.New("hibdisk parent without uuid")
	case r.Format == disklayer.FormatHibdisk && (r.Digest != "" || r.Stat != ""):
		return errors.New("hibdisk parent with a raw digest")
	case r.Format == disklayer.FormatHibdisk && r.SHA256 != "" && !ValidDigest(r.SHA256):
		return fmt.Errorf("hibdisk parent's sha256 %q is not sha256:<64 hex digits>", r.SHA256)
	case r.Format == disklayer.FormatS3 && (r.UUID == "" || !ValidDigest(r.SHA256)):
		return fmt.Errorf("s3 parent without the uuid and sha256 of its top layer")
	case r.Format != disklayer.FormatHibdisk && r.Format != disklayer.FormatS3 && r.Generation != 0:
		return fmt.Errorf("%s parent with a generation", r.Format)
	case r.Generation < 0:
		return fmt.Errorf("parent generation %d is negative", r.Generation)
	case r.Format != disklayer.FormatHibdisk && r.Format != disklayer.FormatS3 && r.UUID != "":
		return fmt.Errorf("%s parent with a uuid", r.Format)
	case !disklayer.KnownParentFormat(r.Format):
		return fmt.Errorf("parent format %q is not one of %v", r.Format, disklayer.ParentFormats())
	}
	return nil
}

func insertLayerRow(conn *sqlite3.Conn, info Info) error {
	stmt, _, err := conn.Prepare(`INSERT INTO layer (id, uuid, sector_size, disk_size, read_only, created_at, label, read_cache) VALUES (1, ?1, ?2, ?3, 0, ?4, ?5, ?6)`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	stmt.BindText(1, info.UUID)
	stmt.BindInt64(2, int64(info.SectorSize))
	stmt.BindInt64(3, info.DiskSize)
	stmt.BindText(4, info.CreatedAt.Format(time.RFC3339))
	bindOptionalText(stmt, 5, info.Label)
	stmt.BindBool(6, info.ReadCache)
	if err := stmt.Exec(); err != nil {
		return err
	}
	return updateParent(conn, info.Parent)
}

func updateParent(conn *sqlite3.Conn, ref *disklayer.ParentRef) error {
	stmt, _, err := conn.Prepare(`UPDATE layer SET parent_path = ?1, parent_format = ?2, parent_uuid = ?3, parent_size = ?4, parent_digest = ?5,
  parent_generation = ?6, parent_sha256 = ?7, parent_stat = ?8`)
	if err != nil {
		return err
	}
	defer stmt.Close()
	if ref != nil {
		stmt.BindText(1, ref.Path)
		stmt.BindText(2, ref.Format)
		bindOptionalText(stmt, 3, ref.UUID)
		stmt.BindInt64(4, ref.Size)
		bindOptionalText(stmt, 5, ref.Digest)
		if ref.Generation != 0 {
			stmt.BindInt64(6, ref.Generation)
		}
		bindOptionalText(stmt, 7, ref.SHA256)
		bindOptionalText(stmt, 8, ref.Stat)
	}
	return stmt.Exec()
}

// bindOptionalText binds "" as NULL.
func bindOptionalText(stmt *sqlite3.Stmt, param int, s string) {
	if s == "" {
		stmt.BindNull(param)
	} else {
		stmt.BindText(param, s)
	}
}

// readLayerRow reads and validates the layer row. Any inconsistency is
// ErrCorrupt: a layer whose row cannot be trusted cannot be served.
func readLayerRow(conn *sqlite3.Conn) (Info, error) {
	var problems []string
	info, ok := scanLayerRow(conn, func(p string) { problems = append(problems, p) })
	if len(problems) > 0 || !ok {
		return Info{}, fmt.Errorf("layer row: %s: %w", strings.Join(problems, "; "), disklayer.ErrCorrupt)
	}
	return info, nil
}

// scanLayerRow reads the layer row, reporting every problem it finds. ok
// is false when the row could not be read at all.
func scanLayerRow(conn *sqlite3.Conn, problem func(string)) (info Info, ok bool) {
	// Schema version 5 added generations and full parent identities; an
	// older layer opened read-only reads as having none recorded.
	v5, err := hasGenerations(conn)
	if err != nil {
		problem(fmt.Sprintf("cannot read the schema version: %v", mapStoreError(err)))
		return Info{}, false
	}
	extra := `0, NULL, NULL, NULL, 'integer', 'null'`
	if v5 {
		extra = `generation, parent_generation, parent_sha256, parent_stat, typeof(generation), typeof(parent_generation)`
	}
	v6, err := hasReadCache(conn)
	if err != nil {
		problem(fmt.Sprintf("cannot read the schema version: %v", mapStoreError(err)))
		return Info{}, false
	}
	if v6 {
		extra += `, read_cache`
	} else {
		extra += `, 0`
	}
	stmt, _, err := conn.Prepare(`SELECT uuid, sector_size, disk_size, parent_path, parent_format, parent_uuid, parent_size, parent_digest, read_only, created_at, label, typeof(sector_size), typeof(disk_size), typeof(parent_size), ` + extra + ` FROM layer`)
	if err != nil {
		problem(fmt.Sprintf("cannot read the layer table: %v", mapStoreError(err)))
		return Info{}, false
	}
	defer stmt.Close()
	rows := 0
	for stmt.Step() {
		rows++
		if rows > 1 {
			continue
		}
		info = Info{
			UUID:       stmt.ColumnText(0),
			SectorSize: stmt.ColumnInt(1),
			DiskSize:   stmt.ColumnInt64(2),
			ReadOnly:   stmt.ColumnInt64(8) != 0,
			Label:      stmt.ColumnText(10),
			Generation: stmt.ColumnInt64(14),
			ReadCache:  stmt.ColumnInt64(20) == 1,
		}
		if v := stmt.ColumnInt64(20); v != 0 && v != 1 {
			problem(fmt.Sprintf("read_cache is %d, want 0 or 1", v))
		}
		if v5 && (stmt.ColumnText(18) != "integer" || info.Generation < 1) {
			problem(fmt.Sprintf("generation %s must be an integer of at least 1", stmt.ColumnText(14)))
		}
		if stmt.ColumnText(11) != "integer" || stmt.ColumnText(12) != "integer" {
			problem(fmt.Sprintf("sector_size (%s) and disk_size (%s) must be integers", stmt.ColumnText(11), stmt.ColumnText(12)))
		}
		if info.UUID == "" {
			problem("uuid is empty")
		}
		if !disklayer.ValidSectorSize(info.SectorSize) {
			problem(fmt.Sprintf("sector_size %d is not a power of two in [%d, %d]", info.SectorSize, disklayer.MinSectorSize, disklayer.MaxSectorSize))
		} else if err := validDiskSize(info.DiskSize, info.SectorSize); err != nil {
			problem(fmt.Sprintf("disk_size %d is not a multiple of sector_size %d in [0, 2^60]", info.DiskSize, info.SectorSize))
		}
		created := stmt.ColumnText(9)
		if t, err := time.Parse(time.RFC3339, created); err != nil {
			problem(fmt.Sprintf("created_at %q is not an RFC 3339 time", created))
		} else {
			info.CreatedAt = t.UTC()
		}
		if v := stmt.ColumnInt64(8); v != 0 && v != 1 {
			problem(fmt.Sprintf("read_only is %d, want 0 or 1", v))
		}
		parentSet := 0
		for col := 3; col <= 7; col++ {
			if stmt.ColumnType(col) != sqlite3.NULL {
				parentSet++
			}
		}
		if parentSet == 0 {
			continue
		}
		ref := disklayer.ParentRef{
			Path:       stmt.ColumnText(3),
			Format:     stmt.ColumnText(4),
			UUID:       stmt.ColumnText(5),
			Size:       stmt.ColumnInt64(6),
			Digest:     stmt.ColumnText(7),
			Generation: stmt.ColumnInt64(15),
			SHA256:     stmt.ColumnText(16),
			Stat:       stmt.ColumnText(17),
		}
		if t := stmt.ColumnText(19); t != "integer" && t != "null" {
			problem(fmt.Sprintf("parent_generation must be an integer, is %s", t))
		}
		if stmt.ColumnType(6) != sqlite3.NULL && stmt.ColumnText(13) != "integer" {
			problem(fmt.Sprintf("parent_size must be an integer, is %s", stmt.ColumnText(13)))
		}
		if stmt.ColumnType(6) == sqlite3.NULL {
			problem("parent_size is NULL for a layer with a parent")
		}
		if err := validateParent(ref); err != nil {
			problem(err.Error())
		}
		info.Parent = &ref
	}
	if err := stmt.Err(); err != nil {
		problem(fmt.Sprintf("cannot read the layer row: %v", mapStoreError(err)))
		return Info{}, false
	}
	switch {
	case rows == 0:
		problem("the layer table has no row")
		return Info{}, false
	case rows > 1:
		problem(fmt.Sprintf("the layer table has %d rows, want exactly one", rows))
	}
	return info, true
}
