package datastore

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// The datastore's consistency checks, registered so that every check of a
// layer runs them (`hibdisk check`, diffdisk.Check, a Strict open for the
// first part). They verify what this package's code assumes of its rows
// beyond what the schema's constraints enforce (integrity_check verifies
// those):
//
// In the layer file (a sqlitelayer.TableCheck):
//   - every key (of entries, MAP snapshots and pending reports) is 1 to
//     MaxKeyLen bytes of UTF-8 (checkKey), and every type is one of Types;
//   - a live entry holds exactly the value of its type: U32 and LABEL an
//     integer num in [0, 2^32), STRING a text value and MEM a blob value
//     of at most MaxValueLen bytes, MAP a source, offset and length that
//     lie in the chain's disk (the layer's disk_size) or hibernate file
//     (checkMapRange); every other value column is NULL;
//   - a tombstone (deleted = 1) holds no value;
//   - seq is at least 1 (change numbers start at 1) and changed_at is RFC
//     3339;
//   - a MAP snapshot with data is a blob whose length is its MAP's range
//     length, and is not left behind by a MAP deleted in this layer
//     (deleting a MAP deletes its snapshots); taken_at is RFC 3339;
//   - a subscription's pattern compiles, its types are valid, and its
//     cursor is in [0, the layer's highest seq]: a cursor past the last
//     change would skip the changes numbered up to it;
//   - a pending initial report belongs to a subscription (no orphan) and
//     matches its pattern and types.
//
// Through the chain (a diffdisk check, for `hibdisk check`):
//   - a live LABEL number names one label in the resolved chain;
//   - every visible MAP snapshot belongs to a live MAP entry of the chain
//     and has its range's length.
func init() {
	sqlitelayer.RegisterTableCheck(sqlitelayer.TableCheck{
		Name:   "datastore",
		Tables: []string{"datastore", "datastore_snapshots", "datastore_subscriptions", "datastore_pending"},
		Check:  checkTables,
	})
	diffdisk.RegisterCheck(diffdisk.ExtraCheck{Name: "datastore", Check: checkChain})
}

// findings groups the rows that break one rule, so a report line names
// the rule once with a count and the first few rows.
type findings struct {
	order []string
	rows  map[string][]string
}

func (f *findings) add(rule, row string) {
	if f.rows == nil {
		f.rows = map[string][]string{}
	}
	if _, ok := f.rows[rule]; !ok {
		f.order = append(f.order, rule)
	}
	f.rows[rule] = append(f.rows[rule], row)
}

// maxShown bounds the rows a report line names.
const maxShown = 8

func (f *findings) report(problem func(string, ...any)) {
	for _, rule := range f.order {
		rows := f.rows[rule]
		shown := rows[:min(len(rows), maxShown)]
		more := ""
		if len(rows) > maxShown {
			more = ", …"
		}
		problem("%d %s: %s%s", len(rows), rule, strings.Join(shown, ", "), more)
	}
}

func checkTables(conn *sqlite3.Conn, info sqlitelayer.Info, r *sqlitelayer.TableReport) error {
	st, _, err := conn.Prepare(`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'datastore'`)
	if err != nil {
		return err
	}
	has := st.Step() && st.ColumnInt(0) > 0
	if err := st.Close(); err != nil {
		return err
	}
	if !has {
		return nil // a layer older than schema version 3, opened read-only
	}
	var f findings
	maxSeq, err := checkEntries(conn, info, &f)
	if err != nil {
		return err
	}
	if err := checkSnapshots(conn, &f); err != nil {
		return err
	}
	if err := checkSubscriptions(conn, maxSeq, &f); err != nil {
		return err
	}
	f.report(r.Problemf)
	return nil
}

// checkEntries checks the rows of table datastore and returns the highest
// seq.
func checkEntries(conn *sqlite3.Conn, info sqlitelayer.Info, f *findings) (maxSeq int64, err error) {
	err = query(conn, `SELECT key, typeof(key), type, deleted, num, typeof(num), value, typeof(value),
 map_source, map_offset, typeof(map_offset), map_length, typeof(map_length), seq, changed_at
 FROM datastore ORDER BY seq`, nil, func(st *sqlite3.Stmt) bool {
		key, typ := st.ColumnText(0), Type(st.ColumnText(2))
		id := fmt.Sprintf("%q (%s)", key, typ)
		deleted := st.ColumnInt64(3) != 0
		numType, valueType := st.ColumnText(5), st.ColumnText(7)
		hasMap := st.ColumnType(8) != sqlite3.NULL || st.ColumnType(9) != sqlite3.NULL || st.ColumnType(11) != sqlite3.NULL
		seq := st.ColumnInt64(13)
		maxSeq = max(maxSeq, seq)
		if st.ColumnText(1) != "text" || !validKey(key) {
			f.add(fmt.Sprintf("entries whose key is not 1 to %d bytes of UTF-8", MaxKeyLen), id)
		}
		if !typ.valid() {
			f.add("entries of an unknown type", id)
		}
		if seq < 1 {
			f.add("entries with a change number (seq) below 1", id)
		}
		if _, err := time.Parse(time.RFC3339, st.ColumnText(14)); err != nil {
			f.add("entries whose changed_at is not RFC 3339", id)
		}
		if deleted {
			if numType != "null" || valueType != "null" || hasMap {
				f.add("tombstones (deleted entries) that hold a value", id)
			}
			return true
		}
		wrong := func() { f.add("entries whose value does not fit their type", id) }
		switch typ {
		case U32, Label:
			if n := st.ColumnInt64(4); numType != "integer" || n < 0 || n > math.MaxUint32 || valueType != "null" || hasMap {
				wrong()
			}
		case String, Mem:
			want := "text"
			if typ == Mem {
				want = "blob"
			}
			if valueType != want || numType != "null" || hasMap {
				wrong()
			} else if n := len(st.ColumnRawBlob(6)); n > MaxValueLen {
				f.add(fmt.Sprintf("values longer than %d bytes", MaxValueLen), id)
			}
		case Map:
			if numType != "null" || valueType != "null" || st.ColumnText(10) != "integer" || st.ColumnText(12) != "integer" {
				wrong()
				break
			}
			m := MapRange{Source: MapSource(st.ColumnText(8)), Offset: st.ColumnInt64(9), Length: st.ColumnInt64(11)}
			if err := checkMapRange(m, info.DiskSize); err != nil {
				f.add("MAP entries whose range is not in their file", fmt.Sprintf("%s %v", id, err))
			}
		}
		return true
	})
	return maxSeq, err
}

func checkSnapshots(conn *sqlite3.Conn, f *findings) error {
	return query(conn, `SELECT s.key, s.snapshot, typeof(s.data), length(s.data), s.taken_at, d.deleted, d.map_length
 FROM datastore_snapshots s LEFT JOIN datastore d ON d.key = s.key AND d.type = 'map'
 ORDER BY s.key, s.snapshot`, nil, func(st *sqlite3.Stmt) bool {
		key := st.ColumnText(0)
		id := fmt.Sprintf("%q #%d", key, st.ColumnInt64(1))
		if !validKey(key) {
			f.add(fmt.Sprintf("MAP snapshots whose key is not 1 to %d bytes of UTF-8", MaxKeyLen), id)
		}
		if _, err := time.Parse(time.RFC3339, st.ColumnText(4)); err != nil {
			f.add("MAP snapshots whose taken_at is not RFC 3339", id)
		}
		dataType := st.ColumnText(2)
		switch {
		case dataType == "null": // a tombstone
		case dataType != "blob":
			f.add("MAP snapshots whose data is not a blob", id)
		case st.ColumnType(5) == sqlite3.NULL: // the MAP is in a lower layer: checkChain
		case st.ColumnInt64(5) != 0:
			f.add("MAP snapshots left behind by their deleted MAP", id)
		case st.ColumnInt64(3) != st.ColumnInt64(6):
			f.add("MAP snapshots whose length is not their MAP's", fmt.Sprintf("%s (%d bytes, the MAP has %d)", id, st.ColumnInt64(3), st.ColumnInt64(6)))
		}
		return true
	})
}

func checkSubscriptions(conn *sqlite3.Conn, maxSeq int64, f *findings) error {
	subs := map[string]matcher{}
	err := query(conn, `SELECT owner, pattern, types, cursor FROM datastore_subscriptions ORDER BY owner`, nil, func(st *sqlite3.Stmt) bool {
		owner, types := st.ColumnText(0), splitTypes(st.ColumnText(2))
		id := fmt.Sprintf("%q", owner)
		re, err := compilePattern("subscription", st.ColumnText(1))
		if err != nil {
			f.add("subscriptions whose pattern does not compile", id)
		}
		if slices.ContainsFunc(types, func(t Type) bool { return !t.valid() }) {
			f.add("subscriptions to an unknown type", id)
		}
		if c := st.ColumnInt64(3); c < 0 || c > maxSeq {
			f.add(fmt.Sprintf("subscriptions whose cursor is outside [0, %d], the layer's last change", maxSeq), fmt.Sprintf("%s (cursor %d)", id, c))
		}
		if err == nil {
			subs[owner] = matcher{owner: owner, re: re, types: types}
		}
		return true
	})
	if err != nil {
		return err
	}
	return query(conn, `SELECT p.owner, p.key, p.type, s.owner IS NULL FROM datastore_pending p
 LEFT JOIN datastore_subscriptions s ON s.owner = p.owner ORDER BY p.owner, p.key, p.type`, nil, func(st *sqlite3.Stmt) bool {
		owner, key, typ := st.ColumnText(0), st.ColumnText(1), Type(st.ColumnText(2))
		id := fmt.Sprintf("%q for %q (%s)", owner, key, typ)
		if st.ColumnBool(3) {
			f.add("pending reports without their subscription (orphans)", id)
			return true
		}
		if !validKey(key) || !typ.valid() {
			f.add("pending reports of an invalid key or type", id)
			return true
		}
		// Subscribe queues only entries the subscription matches (it
		// skips other owners' private entries, whose owner this row
		// does not record): match the key and type.
		if m, ok := subs[owner]; ok && !m.match(Entry{Key: key, Type: typ, Owner: owner}) {
			f.add("pending reports that their subscription does not match", id)
		}
		return true
	})
}

// checkChain checks what holds across the chain: label numbers and MAP
// snapshots, resolved as Retrieve resolves them.
func checkChain(path string) (*sqlitelayer.Report, error) {
	r := &sqlitelayer.Report{Path: path}
	note := func(err error) {
		r.Notes = append(r.Notes, fmt.Sprintf("datastore: entries not checked across the chain: %v", err))
	}
	d, err := diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
	if err != nil {
		note(err)
		return r, nil
	}
	defer d.Close()
	s, err := Open(d, Options{})
	if err != nil {
		note(err)
		return r, nil
	}
	defer s.Close()
	var f findings
	err = s.read("check datastore", func(rd *reader) error {
		rows, err := rd.list()
		if err != nil {
			return err
		}
		labels := map[uint32]string{}
		mapLength := map[string]int64{}
		for _, rw := range rows {
			switch rw.Type {
			case Label:
				if other, ok := labels[rw.Label]; ok {
					f.add("label numbers that name two live labels", fmt.Sprintf("%d (%q and %q)", rw.Label, other, rw.Key))
				}
				labels[rw.Label] = rw.Key
			case Map:
				mapLength[rw.Key] = rw.Map.Length
			}
		}
		keys := map[string]bool{}
		for depth := range rd.s.layers {
			err := rd.layer(depth, func(conn *sqlite3.Conn) error {
				return query(conn, `SELECT DISTINCT key FROM datastore_snapshots WHERE data IS NOT NULL`, nil, func(st *sqlite3.Stmt) bool {
					keys[st.ColumnText(0)] = true
					return true
				})
			})
			if err != nil {
				return err
			}
		}
		for _, key := range slices.Sorted(maps.Keys(keys)) {
			snaps, err := rd.snapshots(key)
			if err != nil {
				return err
			}
			length, live := mapLength[key]
			for _, n := range slices.Sorted(maps.Keys(snaps)) {
				id := fmt.Sprintf("%q #%d (layer %d)", key, n, snaps[n])
				if !live {
					f.add("MAP snapshots whose MAP is deleted or missing in the chain", id)
					continue
				}
				err := rd.layer(snaps[n], func(conn *sqlite3.Conn) error {
					return query(conn, `SELECT length(data) FROM datastore_snapshots WHERE key = ? AND snapshot = ?`, []any{key, n}, func(st *sqlite3.Stmt) bool {
						if got := st.ColumnInt64(0); got != length {
							f.add("MAP snapshots whose length is not their MAP's", fmt.Sprintf("%s (%d bytes, the MAP has %d)", id, got, length))
						}
						return false
					})
				})
				if err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return r, fmt.Errorf("check datastore of %q: %w", path, err)
	}
	f.report(func(format string, args ...any) {
		r.Problems = append(r.Problems, "datastore: "+fmt.Sprintf(format, args...))
	})
	return r, nil
}
