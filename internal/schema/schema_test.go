package schema_test

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

var update = flag.Bool("update", false, "rewrite testdata/sqlite_master.golden")

// TestVersionsStableValues: a released version never changes meaning. A
// layer records its version and every migration's name; a later build
// must read both the same. Add versions at the end, never edit these.
func TestVersionsStableValues(t *testing.T) {
	for _, c := range []struct {
		name string
		got  int
		want int
	}{
		{"Layer", schema.Layer, 1},
		{"Hibernate", schema.Hibernate, 2},
		{"Datastore", schema.Datastore, 3},
		{"VMState", schema.VMState, 4},
		{"Generations", schema.Generations, 5},
		{"ReadCache", schema.ReadCache, 6},
		{"ReadableFrom", schema.ReadableFrom, 1},
	} {
		if c.got != c.want {
			t.Errorf("schema.%s = %d, was released as %d", c.name, c.got, c.want)
		}
	}
	names := []string{
		"layer schema v1",
		"hibernate metadata (hibfile v2; converts the seed's v0 tables)",
		"datastore (typed entries, MAP snapshots, subscriptions)",
		"vm_state (QEMU device state of a machine snapshot)",
		"changed-base detection: layer generation and full parent identity",
	}
	if len(schema.History) != schema.Current {
		t.Fatalf("History has %d migrations, Current is %d", len(schema.History), schema.Current)
	}
	for i, name := range names {
		if schema.History[i].Name != name {
			t.Errorf("History[%d] (version %d) is named %q, was released as %q", i, i+1, schema.History[i].Name, name)
		}
	}
	for i, m := range schema.History {
		if m.Apply == nil {
			t.Errorf("History[%d] has no migration", i)
		}
	}
}

// TestSQLiteMasterGolden: the schema a new layer gets, as SQLite stores
// it. A change here is a format change: it needs a new version.
func TestSQLiteMasterGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	conn, err := store.Create(path, store.Options{Migrations: schema.History, PageSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stmt, _, err := conn.Prepare(`SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name`)
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	var b strings.Builder
	for stmt.Step() {
		b.WriteString("-- " + stmt.ColumnText(0) + " " + stmt.ColumnText(1) + " on " + stmt.ColumnText(2) + "\n")
		b.WriteString(stmt.ColumnText(3) + ";\n\n")
	}
	if err := stmt.Err(); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "sqlite_master.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if b.String() != string(want) {
		t.Errorf("a new layer's sqlite_master differs from %s (a format change needs a new schema version; then go test -update):\n%s", golden, b.String())
	}
	if v, err := store.PragmaInt(conn, "user_version"); err != nil || v != schema.Current {
		t.Errorf("user_version %d, %v; want %d", v, err, schema.Current)
	}
}

// TestReadmeVersionTable: the README's version table lists exactly the
// migrations of History, in order, by their recorded names.
func TestReadmeVersionTable(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The table under its header, up to the first line that is not a row.
	text := string(readme)
	start := strings.Index(text, "| version | adds |")
	if start < 0 {
		t.Fatal("README has no version table (a header starting \"| version | adds |\")")
	}
	table := text[start:]
	if end := strings.Index(table, "\n\n"); end >= 0 {
		table = table[:end]
	}
	row := regexp.MustCompile("(?m)^\\| (\\d+) \\| [^|]+ \\| `([^`]+)` \\|$")
	rows := row.FindAllStringSubmatch(table, -1)
	if len(rows) != len(schema.History) {
		t.Fatalf("README's version table has %d rows, History %d migrations", len(rows), len(schema.History))
	}
	for i, r := range rows {
		if v, _ := strconv.Atoi(r[1]); v != i+1 || r[2] != schema.History[i].Name {
			t.Errorf("README row %d: version %s %q; want version %d %q", i, r[1], r[2], i+1, schema.History[i].Name)
		}
	}
}
