// Package openvmmtest makes OpenVMM disklayer_sqlite files for tests the
// way OpenVMM does, through the sqlite3 shell (the real SQLite, not
// hibdisk's code), and queries them with it.
package openvmmtest

import (
	_ "embed"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// FormatSQL is OpenVMM's formatting DDL, as in their source.
//
//go:embed openvmm-format.sql
var FormatSQL string

// Require fails the test in CI when the sqlite3 shell is missing and
// skips it elsewhere.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireTools(t, "sqlite3", "sqlite3")
}

// Shell runs sql through `sqlite3 path` and returns its output with the
// trailing newline trimmed. Statements see the shell's defaults (list
// mode, "|" separators).
func Shell(t testing.TB, path, sql string) string {
	t.Helper()
	Require(t)
	cmd := exec.Command("sqlite3", "-batch", "-bail", path)
	cmd.Stdin = strings.NewReader(sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sqlite3 %s: %v\n%s\nSQL:\n%s", path, err, out, sql)
	}
	return strings.TrimSuffix(string(out), "\n")
}

// MetaJSON is the meta row OpenVMM writes for a layer of count sectors
// of ss bytes (serde_json of its DiskMeta struct).
func MetaJSON(readOnly bool, count int64, ss int) string {
	return fmt.Sprintf(`{"logically_read_only":%t,"sector_count":%d,"sector_size":%d}`, readOnly, count, ss)
}

// Make formats a new OpenVMM file at path as OpenVMM does (FormatSQL,
// then the meta row through json()) and runs rows, SQL that fills the
// sectors table, in the same shell session. The shell checkpoints the
// WAL when it exits, so the file is complete on its own.
func Make(t testing.TB, path string, count int64, ss int, rows string) {
	t.Helper()
	meta := fmt.Sprintf("INSERT INTO meta VALUES (json('%s'));\n", MetaJSON(false, count, ss))
	Shell(t, path, FormatSQL+meta+rows)
}

// Fill is an SQL expression for a blob of n bytes of the character c:
// deterministic content the test can predict (Pattern).
func Fill(n int, c byte) string {
	return fmt.Sprintf("CAST(printf('%%.*c', %d, '%c') AS BLOB)", n, c)
}

// Pattern is what Fill(n, c) stores.
func Pattern(n int, c byte) []byte {
	return []byte(strings.Repeat(string(c), n))
}
