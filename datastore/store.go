package datastore

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Store is the datastore of an open layer chain. Its methods are safe for
// concurrent use.
type Store struct {
	path   string // the top layer's file
	layers []layerRef
	disk   *diffdisk.Disk // the chain, for MAP ranges of the disk

	// hib is the chain's hibernate file, made at the first MAP read of
	// it. It is never closed: closing a hibernate view detaches the
	// layers' shared hibernate tables from every other view of them
	// (hibdisk serve's hibernate export); closing the chain releases it.
	hibOnce sync.Once
	hib     *diffdisk.Disk
	hibErr  error

	// watch is the Store's own read-only connection to the top layer:
	// reads outside a write run in short transactions on it, so they see
	// what any connection (this process's layer, another process)
	// committed, which the layer's own connection, keeping its read
	// transaction open, would not. nil when the top has no datastore
	// tables (a read-only open of an older schema).
	mu     sync.Mutex
	watch  *sqlite3.Conn
	closed bool
}

// layerRef is one hibdisk layer of the chain; has says whether it has
// the datastore tables (a layer opened read-only may be at an older
// schema version, and then holds no entries).
type layerRef struct {
	f   *sqlitelayer.File
	has bool
}

// Options configure Open.
type Options struct {
	// Hibernate is the chain's hibernate file if the caller has opened
	// it (d.Hibernate()) and may write it: a chain must be read through
	// the same Disk that writes it, whose index knows what its top holds.
	// nil makes the Store open its own at the first read of a hibernate
	// MAP, for callers that do not write the hibernate file meanwhile.
	Hibernate *diffdisk.Disk
}

// Open returns the datastore of chain d. The chain's top must be a
// hibdisk layer; the datastore ends at the first layer that is not one (a
// raw base holds no entries). Close the Store before d.
func Open(d *diffdisk.Disk, opts Options) (*Store, error) {
	top, ok := d.Layer(0).(*sqlitelayer.File)
	if !ok {
		return nil, fmt.Errorf("open datastore: the top layer is a raw image: %w", disklayer.ErrNotLayer)
	}
	s := &Store{path: top.Path(), disk: d, hib: opts.Hibernate}
	for i := 0; i < d.Depth(); i++ {
		f, ok := d.Layer(i).(*sqlitelayer.File)
		if !ok {
			break
		}
		has, err := hasTables(f)
		if err != nil {
			return nil, err
		}
		s.layers = append(s.layers, layerRef{f: f, has: has})
	}
	if s.layers[0].has {
		uri, err := store.ReadOnlyURI(s.path)
		if err != nil {
			return nil, fmt.Errorf("open datastore of %q: %w", s.path, err)
		}
		conn, err := sqlite3.Open(uri)
		if err != nil {
			return nil, fmt.Errorf("open datastore of %q: %w", s.path, err)
		}
		if err := conn.BusyTimeout(10 * time.Second); err != nil {
			conn.Close()
			return nil, fmt.Errorf("open datastore of %q: %w", s.path, err)
		}
		s.watch = conn
	}
	return s, nil
}

func hasTables(f *sqlitelayer.File) (bool, error) {
	var has bool
	err := f.View("open datastore", func(conn *sqlite3.Conn) error {
		st, _, err := conn.Prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'datastore'`)
		if err != nil {
			return err
		}
		defer st.Close()
		has = st.Step()
		return st.Err()
	})
	return has, err
}

// hibernate returns the chain's hibernate file.
func (s *Store) hibernate() (*diffdisk.Disk, error) {
	s.hibOnce.Do(func() {
		if s.hib == nil {
			s.hib, s.hibErr = s.disk.Hibernate()
		}
	})
	return s.hib, s.hibErr
}

// Close closes the Store's own connection; the chain stays open. Later
// calls fail with disklayer.ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("close datastore of %q: %w", s.path, disklayer.ErrClosed)
	}
	s.closed = true
	if s.watch != nil {
		if err := s.watch.Close(); err != nil {
			return fmt.Errorf("close datastore of %q: %w", s.path, err)
		}
	}
	return nil
}

// Path is the top layer's file name.
func (s *Store) Path() string { return s.path }

// reader reads the chain inside one transaction of the top layer: a read
// transaction on the watch connection, or the write transaction of an
// update.
type reader struct {
	s   *Store
	top *sqlite3.Conn
}

// layer runs fn on the layer at depth, if it has datastore tables.
func (r *reader) layer(depth int, fn func(conn *sqlite3.Conn) error) error {
	l := r.s.layers[depth]
	if !l.has {
		return nil
	}
	if depth == 0 {
		return fn(r.top)
	}
	return l.f.View("read datastore", fn)
}

// read runs fn in a read transaction of the top layer.
func (s *Store) read(op string, fn func(r *reader) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("%s %q: datastore closed: %w", op, s.path, disklayer.ErrClosed)
	}
	if s.watch == nil {
		return fn(&reader{s: s})
	}
	if err := s.watch.Exec("BEGIN"); err != nil {
		return fmt.Errorf("%s %q: begin: %w", op, s.path, err)
	}
	err := fn(&reader{s: s, top: s.watch})
	if cerr := s.watch.Exec("COMMIT"); cerr != nil && err == nil {
		err = fmt.Errorf("%s %q: end read: %w", op, s.path, cerr)
	}
	return err
}

// write runs fn in the top layer's write transaction and commits it. The
// layer's open read transaction, if any, is ended first (Flush), so the
// write starts from the newest commit of any process; a write that still
// finds its snapshot outdated (another process committed in between) is
// retried.
func (s *Store) write(op string, fn func(r *reader) error) error {
	top := s.layers[0]
	if !top.has {
		return fmt.Errorf("%s %q: the layer has no datastore (schema older than version 3, opened read-only): %w", op, s.path, disklayer.ErrReadOnly)
	}
	var err error
	for range 5 {
		if err = top.f.Flush(); err != nil {
			return err
		}
		err = top.f.Update(op, func(tx *sqlitelayer.Tx) error {
			return fn(&reader{s: s, top: tx.Conn()})
		})
		if !errors.Is(err, sqlite3.BUSY_SNAPSHOT) {
			return err
		}
	}
	return err
}

// row is one datastore row of a layer.
type row struct {
	Entry
	deleted bool
	seq     int64
}

const rowColumns = `key, type, deleted, owner, private, num, value, map_source, map_offset, map_length, seq, changed_at`

func scanRow(st *sqlite3.Stmt, depth int) row {
	r := row{
		Entry: Entry{
			Key:       st.ColumnText(0),
			Type:      Type(st.ColumnText(1)),
			Owner:     st.ColumnText(3),
			Private:   st.ColumnInt64(4) != 0,
			Depth:     depth,
			ChangedAt: st.ColumnText(11),
		},
		deleted: st.ColumnInt64(2) != 0,
		seq:     st.ColumnInt64(10),
	}
	if r.deleted {
		return r
	}
	switch r.Type {
	case U32:
		r.U32 = uint32(st.ColumnInt64(5))
	case Label:
		r.Label = uint32(st.ColumnInt64(5))
	case String:
		r.String = st.ColumnText(6)
	case Mem:
		r.Mem = st.ColumnBlob(6, []byte{})
	case Map:
		r.Map = &MapRange{Source: MapSource(st.ColumnText(7)), Offset: st.ColumnInt64(8), Length: st.ColumnInt64(9)}
	}
	return r
}

// query runs sql with args bound in order and calls each for every
// result row until it returns false.
func query(conn *sqlite3.Conn, sql string, args []any, each func(st *sqlite3.Stmt) bool) error {
	st, _, err := conn.Prepare(sql)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := bind(st, args); err != nil {
		return err
	}
	for st.Step() {
		if !each(st) {
			break
		}
	}
	return st.Err()
}

func exec(conn *sqlite3.Conn, sql string, args ...any) error {
	st, _, err := conn.Prepare(sql)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := bind(st, args); err != nil {
		return err
	}
	return st.Exec()
}

func bind(st *sqlite3.Stmt, args []any) error {
	for i, a := range args {
		var err error
		switch v := a.(type) {
		case nil:
			err = st.BindNull(i + 1)
		case string:
			err = st.BindText(i+1, v)
		case int64:
			err = st.BindInt64(i+1, v)
		case int:
			err = st.BindInt64(i+1, int64(v))
		case bool:
			err = st.BindBool(i+1, v)
		case []byte:
			if v == nil {
				v = []byte{}
			}
			err = st.BindBlob(i+1, v)
		default:
			return fmt.Errorf("bind %T: unsupported", a)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// layerRow returns the row for (key, typ) of the layer at depth, or nil.
func (r *reader) layerRow(depth int, key string, typ Type) (*row, error) {
	var found *row
	err := r.layer(depth, func(conn *sqlite3.Conn) error {
		return query(conn, `SELECT `+rowColumns+` FROM datastore WHERE key = ? AND type = ?`, []any{key, string(typ)}, func(st *sqlite3.Stmt) bool {
			rw := scanRow(st, depth)
			found = &rw
			return false
		})
	})
	return found, err
}

// resolve returns the entry (key, typ) of the chain: the row of the
// topmost layer that has one, nil when there is none or it is a tombstone.
func (r *reader) resolve(key string, typ Type) (*row, error) {
	for depth := range r.s.layers {
		rw, err := r.layerRow(depth, key, typ)
		if err != nil {
			return nil, err
		}
		if rw != nil {
			if rw.deleted {
				return nil, nil
			}
			return rw, nil
		}
	}
	return nil, nil
}

// resolveLabelNumber returns the live label with number num, or nil. A
// lower layer's label counts only if no upper layer overrides its name.
func (r *reader) resolveLabelNumber(num uint32) (*row, error) {
	for depth := range r.s.layers {
		var cand *row
		err := r.layer(depth, func(conn *sqlite3.Conn) error {
			return query(conn, `SELECT `+rowColumns+` FROM datastore WHERE type = 'label' AND deleted = 0 AND num = ?`, []any{int64(num)}, func(st *sqlite3.Stmt) bool {
				rw := scanRow(st, depth)
				cand = &rw
				return false
			})
		})
		if err != nil || cand == nil {
			if err != nil {
				return nil, err
			}
			continue
		}
		res, err := r.resolve(cand.Key, Label)
		if err != nil {
			return nil, err
		}
		if res != nil && res.Depth == depth {
			return res, nil
		}
	}
	return nil, nil
}

// list returns every live entry of the chain, sorted by key and type.
func (r *reader) list() ([]row, error) {
	type id struct {
		key string
		typ Type
	}
	seen := map[id]bool{}
	var out []row
	for depth := range r.s.layers {
		err := r.layer(depth, func(conn *sqlite3.Conn) error {
			return query(conn, `SELECT `+rowColumns+` FROM datastore`, nil, func(st *sqlite3.Stmt) bool {
				rw := scanRow(st, depth)
				k := id{rw.Key, rw.Type}
				if !seen[k] {
					seen[k] = true
					if !rw.deleted {
						out = append(out, rw)
					}
				}
				return true
			})
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return typeOrder(out[i].Type) < typeOrder(out[j].Type)
	})
	return out, nil
}

func typeOrder(t Type) int {
	for i, u := range Types {
		if u == t {
			return i
		}
	}
	return len(Types)
}

// snapshots returns the visible snapshots of MAP key: number → depth of
// the layer holding it.
func (r *reader) snapshots(key string) (map[int]int, error) {
	seen := map[int]bool{}
	live := map[int]int{}
	for depth := range r.s.layers {
		err := r.layer(depth, func(conn *sqlite3.Conn) error {
			return query(conn, `SELECT snapshot, data IS NULL FROM datastore_snapshots WHERE key = ?`, []any{key}, func(st *sqlite3.Stmt) bool {
				n := st.ColumnInt(0)
				if !seen[n] {
					seen[n] = true
					if st.ColumnInt(1) == 0 {
						live[n] = depth
					}
				}
				return true
			})
		})
		if err != nil {
			return nil, err
		}
	}
	return live, nil
}

// nextSeq is the top layer's next change number.
func nextSeq(conn *sqlite3.Conn) (int64, error) {
	var seq int64
	err := query(conn, `SELECT coalesce(max(seq), 0) + 1 FROM datastore`, nil, func(st *sqlite3.Stmt) bool {
		seq = st.ColumnInt64(0)
		return false
	})
	return seq, err
}

// put writes e (or its tombstone) as the top layer's row for (e.Key,
// e.Type) with the next change number.
func put(conn *sqlite3.Conn, e Entry, deleted bool) error {
	seq, err := nextSeq(conn)
	if err != nil {
		return err
	}
	var num, value, source, offset, length any
	if !deleted {
		switch e.Type {
		case U32:
			num = int64(e.U32)
		case Label:
			num = int64(e.Label)
		case String:
			value = e.String
		case Mem:
			value = e.Mem
		case Map:
			source, offset, length = string(e.Map.Source), e.Map.Offset, e.Map.Length
		}
	}
	return exec(conn, `INSERT INTO datastore (`+rowColumns+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key, type) DO UPDATE SET deleted = excluded.deleted, owner = excluded.owner, private = excluded.private,
  num = excluded.num, value = excluded.value, map_source = excluded.map_source, map_offset = excluded.map_offset,
  map_length = excluded.map_length, seq = excluded.seq, changed_at = excluded.changed_at`,
		e.Key, string(e.Type), deleted, e.Owner, e.Private, num, value, source, offset, length, seq, now())
}

func now() string { return time.Now().UTC().Format(time.RFC3339) }
