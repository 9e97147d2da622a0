package hibfile

import (
	"fmt"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/internal/schema"
)

func formatTime(t time.Time) string { return schema.FormatTime(t) }

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q is not RFC 3339: %w", s, err)
	}
	return t.UTC(), nil
}

// queryInt runs a query returning one integer.
func queryInt(conn *sqlite3.Conn, sql string, args ...any) (int64, error) {
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return 0, err
	}
	defer stmt.Close()
	if err := bindAll(stmt, args); err != nil {
		return 0, err
	}
	if !stmt.Step() {
		if err := stmt.Err(); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("%s: no row", sql)
	}
	return stmt.ColumnInt64(0), nil
}

func execBind(conn *sqlite3.Conn, sql string, args ...any) error {
	stmt, _, err := conn.Prepare(sql)
	if err != nil {
		return err
	}
	defer stmt.Close()
	if err := bindAll(stmt, args); err != nil {
		return err
	}
	return stmt.Exec()
}

func bindAll(stmt *sqlite3.Stmt, args []any) error {
	for i, a := range args {
		var err error
		switch v := a.(type) {
		case int64:
			err = stmt.BindInt64(i+1, v)
		case int:
			err = stmt.BindInt64(i+1, int64(v))
		case string:
			err = stmt.BindText(i+1, v)
		case nil:
			err = stmt.BindNull(i + 1)
		default:
			return fmt.Errorf("bind %T: unsupported", a)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// optInt reads a nullable integer column.
func optInt(stmt *sqlite3.Stmt, col int) *int64 {
	if stmt.ColumnType(col) == sqlite3.NULL {
		return nil
	}
	return ptr(stmt.ColumnInt64(col))
}
