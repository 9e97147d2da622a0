// The hibernate metadata (schema version Hibernate): the tables,
// indexes and views package hibfile reads and writes in a layer database,
// and the migration that creates them.
//
// A version 1 layer may already hold the seed's hibernate tables, created
// by hand from the OS project's design with its literal DDL (HibernateSeed,
// "version 0" of the metadata). Migration 2 converts them, rows included,
// and drops the originals.
//
// # Invariants
//
//   - Every row of hibernate_processes, hibernate_memory_map,
//     hibernate_files and hibernate_signals belongs to a snapshot and a
//     process of that snapshot: foreign keys (snapshot_id, pid) with
//     ON DELETE CASCADE, so deleting a snapshot deletes its rows.
//   - Addresses and offsets are signed 64-bit integers (SQLite's
//     INTEGER); user-space addresses fit, kernel addresses above 2^63 do
//     not and are not stored.
//   - blob_offset and registers_offset are byte offsets into the layer
//     chain's hibernate file when blob_file_path is NULL; NULL offsets mean
//     no content was stored.

package schema

import (
	"fmt"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"
)

// HibernateTables is the DDL of the hibernate metadata. Indexes: the seed asks for
// snapshot_id on every table, pid on the process tables and (pid,
// virtual_addr) on the memory map. The composite keys provide most of them
// as leading columns: UNIQUE (snapshot_id, pid, ...) on processes, files
// and signals serves snapshot_id and (snapshot_id, pid) lookups, and the
// memory map's primary key (pid, virtual_addr, snapshot_id) serves pid and
// (pid, virtual_addr). The remaining two are explicit indexes.
const HibernateTables = `
CREATE TABLE hibernate_snapshot (
  snapshot_id     INTEGER PRIMARY KEY,
  timestamp       TEXT NOT NULL,                -- RFC 3339, UTC, nanoseconds
  kernel_version  TEXT NOT NULL DEFAULT '',
  total_processes INTEGER NOT NULL,             -- rows in hibernate_processes
  total_memory_kb INTEGER NOT NULL,             -- the machine's memory (producer's figure)
  blob_file_path  TEXT,                         -- NULL: offsets are into the chain's hibernate file
  layer_uuid      TEXT NOT NULL,                -- the layer the snapshot was saved in
  source          TEXT NOT NULL DEFAULT '',     -- producer: linux-proc, json, seed-v0, ...
  status          TEXT NOT NULL DEFAULT 'complete' CHECK (status IN ('complete', 'partial')),
  arch            TEXT NOT NULL DEFAULT '',     -- register blob format, e.g. x86_64 (user_regs_struct)
  blob_size       INTEGER NOT NULL DEFAULT 0    -- end of the highest blob range; every range lies below
);
CREATE TABLE hibernate_processes (
  snapshot_id      INTEGER NOT NULL REFERENCES hibernate_snapshot (snapshot_id) ON DELETE CASCADE,
  pid              INTEGER NOT NULL,
  parent_pid       INTEGER NOT NULL DEFAULT 0,  -- a pid not in the snapshot makes this a root
  name             TEXT NOT NULL,
  state            TEXT NOT NULL,               -- running, sleeping, disk-sleep, stopped, zombie, ...
  registers_offset INTEGER,                     -- NULL: registers unknown
  registers_size   INTEGER NOT NULL DEFAULT 0,
  memory_start     INTEGER NOT NULL DEFAULT 0,  -- lowest mapped address
  memory_size      INTEGER NOT NULL DEFAULT 0,  -- bytes mapped in total
  cwd_path         TEXT NOT NULL DEFAULT '',
  UNIQUE (snapshot_id, pid)
);
CREATE INDEX hibernate_processes_pid ON hibernate_processes (pid);
CREATE TABLE hibernate_memory_map (
  snapshot_id   INTEGER NOT NULL,
  pid           INTEGER NOT NULL,
  virtual_addr  INTEGER NOT NULL,
  size          INTEGER NOT NULL,               -- bytes
  physical_addr INTEGER,                        -- optional
  page_size     INTEGER NOT NULL DEFAULT 4096,
  permissions   TEXT NOT NULL DEFAULT '',       -- as /proc/PID/maps: rwxp, rw-s, ...
  flags         TEXT NOT NULL DEFAULT '',       -- comma list: private, shared, anonymous, dirty, ...
  blob_offset   INTEGER,                        -- NULL: contents not stored; else size bytes at this offset
  path          TEXT NOT NULL DEFAULT '',       -- backing file, or [heap], [stack], ...
  file_offset   INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (pid, virtual_addr, snapshot_id),
  FOREIGN KEY (snapshot_id, pid) REFERENCES hibernate_processes (snapshot_id, pid) ON DELETE CASCADE
);
CREATE INDEX hibernate_memory_map_snapshot ON hibernate_memory_map (snapshot_id);
CREATE TABLE hibernate_files (
  snapshot_id INTEGER NOT NULL,
  pid         INTEGER NOT NULL,
  fd          INTEGER NOT NULL,
  path        TEXT NOT NULL,                    -- or socket:[N], pipe:[N], anon_inode:...
  position    INTEGER NOT NULL DEFAULT 0,
  flags       TEXT NOT NULL DEFAULT '',         -- O_RDONLY|O_CLOEXEC, ...
  UNIQUE (snapshot_id, pid, fd),
  FOREIGN KEY (snapshot_id, pid) REFERENCES hibernate_processes (snapshot_id, pid) ON DELETE CASCADE
);
CREATE TABLE hibernate_signals (
  snapshot_id     INTEGER NOT NULL,
  pid             INTEGER NOT NULL,
  signal_number   INTEGER NOT NULL,
  handler_address INTEGER,                      -- NULL: unknown (Linux /proc does not show it)
  disposition     TEXT NOT NULL DEFAULT 'default' CHECK (disposition IN ('default', 'ignore', 'handler')),
  flags           TEXT NOT NULL DEFAULT '',     -- blocked, pending, SA_RESTART, ...
  UNIQUE (snapshot_id, pid, signal_number),
  FOREIGN KEY (snapshot_id, pid) REFERENCES hibernate_processes (snapshot_id, pid) ON DELETE CASCADE
);
`

// HibernateViews make the sqlite3 shell pleasant; README.md documents them.
const HibernateViews = `
CREATE VIEW hibernate_process_tree AS
WITH RECURSIVE tree (snapshot_id, pid, depth, sort_key) AS (
  SELECT p.snapshot_id, p.pid, 0, printf('%012d', p.pid)
  FROM hibernate_processes p
  WHERE NOT EXISTS (SELECT 1 FROM hibernate_processes q
                    WHERE q.snapshot_id = p.snapshot_id AND q.pid = p.parent_pid AND q.pid <> p.pid)
  UNION ALL
  SELECT c.snapshot_id, c.pid, t.depth + 1, t.sort_key || '/' || printf('%012d', c.pid)
  FROM hibernate_processes c JOIN tree t ON c.snapshot_id = t.snapshot_id AND c.parent_pid = t.pid AND c.pid <> t.pid
  WHERE t.depth < 4096
)
SELECT t.snapshot_id, p.pid, p.parent_pid, t.depth,
       substr(printf('%*s', t.depth * 2, ''), 1, t.depth * 2) || p.name AS tree,
       p.state, p.cwd_path,
       (SELECT count(*) FROM hibernate_memory_map m WHERE m.snapshot_id = p.snapshot_id AND m.pid = p.pid) AS mappings,
       (SELECT count(*) FROM hibernate_files f WHERE f.snapshot_id = p.snapshot_id AND f.pid = p.pid) AS files
FROM tree t JOIN hibernate_processes p ON p.snapshot_id = t.snapshot_id AND p.pid = t.pid
ORDER BY t.snapshot_id, t.sort_key;

CREATE VIEW hibernate_maps AS
SELECT m.snapshot_id, m.pid, p.name,
       printf('%012x-%012x', m.virtual_addr, m.virtual_addr + m.size) AS range,
       m.permissions, m.size / 1024 AS size_kb, m.flags,
       CASE WHEN m.blob_offset IS NULL THEN NULL ELSE printf('%#x', m.blob_offset) END AS blob_offset,
       m.path
FROM hibernate_memory_map m JOIN hibernate_processes p ON p.snapshot_id = m.snapshot_id AND p.pid = m.pid
ORDER BY m.snapshot_id, m.pid, m.virtual_addr;

CREATE VIEW hibernate_summary AS
SELECT s.snapshot_id, s.timestamp, s.source, s.status, s.kernel_version, s.arch,
       s.total_processes,
       (SELECT count(*) FROM hibernate_processes p WHERE p.snapshot_id = s.snapshot_id) AS processes,
       (SELECT count(*) FROM hibernate_memory_map m WHERE m.snapshot_id = s.snapshot_id) AS mappings,
       (SELECT count(*) FROM hibernate_files f WHERE f.snapshot_id = s.snapshot_id) AS files,
       (SELECT count(*) FROM hibernate_signals g WHERE g.snapshot_id = s.snapshot_id) AS signals,
       (SELECT coalesce(sum(m.size), 0) FROM hibernate_memory_map m WHERE m.snapshot_id = s.snapshot_id AND m.blob_offset IS NOT NULL) / 1024 AS stored_kb,
       s.total_memory_kb, s.blob_size
FROM hibernate_snapshot s
ORDER BY s.snapshot_id;
`

// HibernateSeed is the seed's literal DDL (metadata "version 0"), as the OS
// project's hibernate design wrote it: integer timestamps, one memory map
// row per page (no size column), numeric open and sigaction flags,
// handler_address 0 for SIG_DFL and 1 for SIG_IGN. Migration 2 converts
// databases that hold it; tests use it to build such databases.
const HibernateSeed = `
CREATE TABLE hibernate_snapshot (
    snapshot_id INTEGER PRIMARY KEY,
    timestamp INTEGER NOT NULL,
    kernel_version TEXT,
    total_processes INTEGER,
    total_memory_kb INTEGER,
    blob_file_path TEXT
);
CREATE TABLE hibernate_processes (
    pid INTEGER NOT NULL,
    parent_pid INTEGER,
    name TEXT,
    state TEXT,
    registers_offset INTEGER,
    memory_start INTEGER,
    memory_size INTEGER,
    cwd_path TEXT,
    snapshot_id INTEGER,
    FOREIGN KEY (snapshot_id) REFERENCES hibernate_snapshot(snapshot_id)
);
CREATE TABLE hibernate_memory_map (
    pid INTEGER,
    virtual_addr INTEGER,
    physical_addr INTEGER,
    page_size INTEGER,
    permissions TEXT,
    flags TEXT,
    blob_offset INTEGER,
    snapshot_id INTEGER,
    PRIMARY KEY (pid, virtual_addr, snapshot_id),
    FOREIGN KEY (snapshot_id) REFERENCES hibernate_snapshot(snapshot_id)
);
CREATE TABLE hibernate_files (
    pid INTEGER,
    fd INTEGER,
    path TEXT,
    position INTEGER,
    flags INTEGER,
    snapshot_id INTEGER,
    FOREIGN KEY (snapshot_id) REFERENCES hibernate_snapshot(snapshot_id)
);
CREATE TABLE hibernate_signals (
    pid INTEGER,
    signal_number INTEGER,
    handler_address INTEGER,
    flags INTEGER,
    snapshot_id INTEGER,
    FOREIGN KEY (snapshot_id) REFERENCES hibernate_snapshot(snapshot_id)
);
CREATE INDEX idx_processes_snapshot ON hibernate_processes(snapshot_id);
CREATE INDEX idx_processes_pid ON hibernate_processes(pid);
CREATE INDEX idx_memory_map_snapshot ON hibernate_memory_map(snapshot_id);
CREATE INDEX idx_memory_map_pid_addr ON hibernate_memory_map(pid, virtual_addr);
CREATE INDEX idx_files_snapshot ON hibernate_files(snapshot_id);
CREATE INDEX idx_files_pid ON hibernate_files(pid);
CREATE INDEX idx_signals_snapshot ON hibernate_signals(snapshot_id);
CREATE INDEX idx_signals_pid ON hibernate_signals(pid);
`

func migrateHibernate(conn *sqlite3.Conn) error {
	seed, err := TableExists(conn, "hibernate_snapshot")
	if err != nil {
		return err
	}
	if seed {
		// Keep the seed's tables aside, build the new ones, copy, drop.
		for _, t := range []string{"hibernate_snapshot", "hibernate_processes", "hibernate_memory_map", "hibernate_files", "hibernate_signals"} {
			if err := conn.Exec(fmt.Sprintf("ALTER TABLE %s RENAME TO seed_%s", t, t)); err != nil {
				return fmt.Errorf("set the seed's %s aside: %w", t, err)
			}
		}
		for _, ix := range []string{"processes_snapshot", "processes_pid", "memory_map_snapshot", "memory_map_pid_addr", "files_snapshot", "files_pid", "signals_snapshot", "signals_pid"} {
			if err := conn.Exec("DROP INDEX IF EXISTS idx_" + ix); err != nil {
				return err
			}
		}
	}
	if err := conn.Exec(HibernateTables); err != nil {
		return fmt.Errorf("create tables: %w", err)
	}
	if err := conn.Exec(HibernateViews); err != nil {
		return fmt.Errorf("create views: %w", err)
	}
	if !seed {
		return nil
	}
	if err := convertSeed(conn); err != nil {
		return fmt.Errorf("convert the seed's v0 rows: %w", err)
	}
	for _, t := range []string{"signals", "files", "memory_map", "processes", "snapshot"} {
		if err := conn.Exec("DROP TABLE seed_hibernate_" + t); err != nil {
			return err
		}
	}
	return nil
}

// TableExists reports whether the database on conn has table name.
func TableExists(conn *sqlite3.Conn, name string) (bool, error) {
	stmt, _, err := conn.Prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
	if err != nil {
		return false, err
	}
	defer stmt.Close()
	stmt.BindText(1, name)
	ok := stmt.Step()
	return ok, stmt.Err()
}

// convertSeed copies the seed's rows into the new tables. The SQL-only
// conversions happen in INSERT ... SELECT; numeric flags are named in Go.
func convertSeed(conn *sqlite3.Conn) error {
	steps := []string{
		`INSERT INTO hibernate_snapshot (snapshot_id, timestamp, kernel_version, total_processes, total_memory_kb, blob_file_path, layer_uuid, source, status, blob_size)
		 SELECT s.snapshot_id, strftime('%Y-%m-%dT%H:%M:%SZ', s.timestamp, 'unixepoch'), coalesce(s.kernel_version, ''),
		        coalesce(s.total_processes, 0), coalesce(s.total_memory_kb, 0), s.blob_file_path,
		        coalesce((SELECT uuid FROM layer), ''), 'seed-v0', 'complete',
		        max(coalesce((SELECT max(m.blob_offset + m.page_size) FROM seed_hibernate_memory_map m WHERE m.snapshot_id = s.snapshot_id AND m.blob_offset IS NOT NULL), 0),
		            coalesce((SELECT max(p.registers_offset) FROM seed_hibernate_processes p WHERE p.snapshot_id = s.snapshot_id), 0))
		 FROM seed_hibernate_snapshot s`,
		// The seed records no register blob size: registers_size stays 0.
		`INSERT INTO hibernate_processes (snapshot_id, pid, parent_pid, name, state, registers_offset, memory_start, memory_size, cwd_path)
		 SELECT snapshot_id, pid, coalesce(parent_pid, 0), coalesce(name, ''), coalesce(state, ''), registers_offset,
		        coalesce(memory_start, 0), coalesce(memory_size, 0), coalesce(cwd_path, '')
		 FROM seed_hibernate_processes WHERE snapshot_id IS NOT NULL`,
		// One seed row per page: size is the page size.
		`INSERT INTO hibernate_memory_map (snapshot_id, pid, virtual_addr, size, physical_addr, page_size, permissions, flags, blob_offset)
		 SELECT snapshot_id, pid, virtual_addr, coalesce(page_size, 4096), physical_addr, coalesce(page_size, 4096),
		        coalesce(permissions, ''), coalesce(flags, ''), blob_offset
		 FROM seed_hibernate_memory_map WHERE snapshot_id IS NOT NULL`,
	}
	for _, sql := range steps {
		if err := conn.Exec(sql); err != nil {
			return err
		}
	}
	if err := convertSeedFiles(conn); err != nil {
		return err
	}
	return convertSeedSignals(conn)
}

func convertSeedFiles(conn *sqlite3.Conn) error {
	sel, _, err := conn.Prepare(`SELECT snapshot_id, pid, fd, coalesce(path, ''), coalesce(position, 0), coalesce(flags, 0) FROM seed_hibernate_files WHERE snapshot_id IS NOT NULL`)
	if err != nil {
		return err
	}
	defer sel.Close()
	ins, _, err := conn.Prepare(`INSERT INTO hibernate_files (snapshot_id, pid, fd, path, position, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	for sel.Step() {
		for i := 0; i < 5; i++ {
			if i == 3 {
				ins.BindText(4, sel.ColumnText(3))
				continue
			}
			ins.BindInt64(i+1, sel.ColumnInt64(i))
		}
		ins.BindText(6, OpenFlagNames(sel.ColumnInt64(5)))
		if err := ins.Exec(); err != nil {
			return err
		}
	}
	return sel.Err()
}

func convertSeedSignals(conn *sqlite3.Conn) error {
	sel, _, err := conn.Prepare(`SELECT snapshot_id, pid, signal_number, handler_address, coalesce(flags, 0) FROM seed_hibernate_signals WHERE snapshot_id IS NOT NULL`)
	if err != nil {
		return err
	}
	defer sel.Close()
	ins, _, err := conn.Prepare(`INSERT INTO hibernate_signals (snapshot_id, pid, signal_number, handler_address, disposition, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6)`)
	if err != nil {
		return err
	}
	defer ins.Close()
	for sel.Step() {
		ins.BindInt64(1, sel.ColumnInt64(0))
		ins.BindInt64(2, sel.ColumnInt64(1))
		ins.BindInt64(3, sel.ColumnInt64(2))
		disposition := "default"
		switch {
		case sel.ColumnType(3) == sqlite3.NULL:
			ins.BindNull(4)
			disposition = "handler" // the seed only left it NULL for unknown handlers
		case sel.ColumnInt64(3) == 0: // SIG_DFL
			ins.BindNull(4)
		case sel.ColumnInt64(3) == 1: // SIG_IGN
			ins.BindNull(4)
			disposition = "ignore"
		default:
			ins.BindInt64(4, sel.ColumnInt64(3))
			disposition = "handler"
		}
		ins.BindText(5, disposition)
		ins.BindText(6, SigactionFlagNames(sel.ColumnInt64(4)))
		if err := ins.Exec(); err != nil {
			return err
		}
	}
	return sel.Err()
}

// Linux open(2) flags (x86-64 and most architectures), as fdinfo shows
// them in octal.
var openFlags = []struct {
	bit  int64
	name string
}{
	{0o1, "O_WRONLY"}, {0o2, "O_RDWR"}, {0o100, "O_CREAT"}, {0o200, "O_EXCL"},
	{0o400, "O_NOCTTY"}, {0o1000, "O_TRUNC"}, {0o2000, "O_APPEND"}, {0o4000, "O_NONBLOCK"},
	{0o4010000, "O_SYNC"}, {0o10000, "O_DSYNC"}, {0o20000, "O_ASYNC"}, {0o40000, "O_DIRECT"}, {0o100000, "O_LARGEFILE"},
	{0o200000, "O_DIRECTORY"}, {0o400000, "O_NOFOLLOW"}, {0o1000000, "O_NOATIME"},
	{0o2000000, "O_CLOEXEC"}, {0o10000000, "O_PATH"},
}

// OpenFlagNames names Linux open flags: the access mode first (O_RDONLY,
// O_WRONLY or O_RDWR), then the other flags, joined by '|'; bits without
// a name are appended in hex.
func OpenFlagNames(flags int64) string {
	var names []string
	switch flags & 3 {
	case 0:
		names = append(names, "O_RDONLY")
	case 1:
		names = append(names, "O_WRONLY")
	case 2:
		names = append(names, "O_RDWR")
	default:
		names = append(names, "O_ACCMODE")
	}
	rest := flags &^ 3
	for _, f := range openFlags[2:] {
		if f.bit&^3 != 0 && rest&f.bit == f.bit {
			names = append(names, f.name)
			rest &^= f.bit
		}
	}
	if rest != 0 {
		names = append(names, fmt.Sprintf("%#x", rest))
	}
	return strings.Join(names, "|")
}

var sigactionFlags = []struct {
	bit  int64
	name string
}{
	{0x1, "SA_NOCLDSTOP"}, {0x2, "SA_NOCLDWAIT"}, {0x4, "SA_SIGINFO"}, {0x04000000, "SA_RESTORER"},
	{0x08000000, "SA_ONSTACK"}, {0x10000000, "SA_RESTART"}, {0x40000000, "SA_NODEFER"}, {0x80000000, "SA_RESETHAND"},
}

// SigactionFlagNames names Linux sigaction sa_flags, joined by '|'; bits
// without a name are appended in hex. Zero is "".
func SigactionFlagNames(flags int64) string {
	var names []string
	for _, f := range sigactionFlags {
		if flags&f.bit != 0 {
			names = append(names, f.name)
			flags &^= f.bit
		}
	}
	if flags != 0 {
		names = append(names, fmt.Sprintf("%#x", flags))
	}
	return strings.Join(names, "|")
}

// FormatTime is how hibernate_snapshot.timestamp stores a time.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
