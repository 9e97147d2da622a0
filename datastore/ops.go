package datastore

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// validKey reports whether key is 1 to MaxKeyLen bytes of UTF-8.
func validKey(key string) bool {
	return len(key) > 0 && len(key) <= MaxKeyLen && utf8.ValidString(key)
}

func checkKey(op string, key string) error {
	if !validKey(key) {
		return fmt.Errorf("%s %q: key must be 1 to %d bytes of UTF-8: %w", op, key, MaxKeyLen, disklayer.ErrInvalid)
	}
	return nil
}

// PublishU32 publishes a U32 entry (MINIX ds_publish_u32). Flags:
// Overwrite, Private.
func (s *Store) PublishU32(key string, v uint32, owner string, flags Flags) error {
	return s.Publish(Entry{Key: key, Type: U32, U32: v, Owner: owner}, flags)
}

// PublishString publishes a STRING entry (ds_publish_str).
func (s *Store) PublishString(key, v, owner string, flags Flags) error {
	return s.Publish(Entry{Key: key, Type: String, String: v, Owner: owner}, flags)
}

// PublishMem publishes a copy of p as a MEM entry (ds_publish_mem).
func (s *Store) PublishMem(key string, p []byte, owner string, flags Flags) error {
	return s.Publish(Entry{Key: key, Type: Mem, Mem: p, Owner: owner}, flags)
}

// PublishMap publishes a range of the chain's disk or hibernate file by
// reference (ds_publish_map). A MAP is never overwritten.
func (s *Store) PublishMap(key string, m MapRange, owner string, flags Flags) error {
	return s.Publish(Entry{Key: key, Type: Map, Map: &m, Owner: owner}, flags)
}

// PublishLabel maps name to num (ds_publish_label). With Overwrite, an
// existing label of that name gets the number, or the label holding the
// number gets the name.
func (s *Store) PublishLabel(name string, num uint32, owner string, flags Flags) error {
	return s.Publish(Entry{Key: name, Type: Label, Label: num, Owner: owner}, flags)
}

// Publish publishes e: e.Key, e.Type, e.Owner and the value field of
// e.Type; Private comes from flags.
func (s *Store) Publish(e Entry, flags Flags) error {
	op := fmt.Sprintf("publish %s", e.Type)
	if err := s.validate(op, &e); err != nil {
		return err
	}
	e.Private = flags&Private != 0
	return s.write(op, func(r *reader) error {
		old, err := r.resolve(e.Key, e.Type)
		if err != nil {
			return err
		}
		var renamed *row // LABEL found by number: it takes the new name
		if e.Type == Label {
			holder, err := r.resolveLabelNumber(e.Label)
			if err != nil {
				return err
			}
			switch {
			case old == nil && holder != nil:
				old, renamed = holder, holder
			case old != nil && holder != nil && holder.Key != e.Key:
				return fmt.Errorf("%s %q: number %d already names label %q: %w", op, e.Key, e.Label, holder.Key, ErrExists)
			}
		}
		if old != nil {
			switch {
			case e.Type == Map:
				return fmt.Errorf("%s %q: a MAP entry is never overwritten (delete it first): %w", op, e.Key, ErrExists)
			case flags&Overwrite == 0:
				if renamed != nil {
					return fmt.Errorf("%s %q: number %d already names label %q (use overwrite to rename it): %w", op, e.Key, e.Label, renamed.Key, ErrExists)
				}
				return fmt.Errorf("%s %q: %w (use overwrite)", op, e.Key, ErrExists)
			case old.Private && old.Owner != e.Owner:
				return fmt.Errorf("%s %q: private entry of %q: %w", op, e.Key, old.Owner, ErrPermission)
			}
		}
		if renamed != nil {
			// The number's old name goes away first: the layer's index
			// allows a live number once.
			if err := put(r.top, renamed.Entry, true); err != nil {
				return err
			}
		}
		return put(r.top, e, false)
	})
}

// validate checks e's key and value; a MAP range must lie in its file.
func (s *Store) validate(op string, e *Entry) error {
	if err := checkKey(op, e.Key); err != nil {
		return err
	}
	switch e.Type {
	case U32, Label:
	case String:
		if len(e.String) > MaxValueLen {
			return fmt.Errorf("%s %q: %d bytes, at most %d: %w", op, e.Key, len(e.String), MaxValueLen, disklayer.ErrInvalid)
		}
	case Mem:
		if len(e.Mem) > MaxValueLen {
			return fmt.Errorf("%s %q: %d bytes, at most %d: %w", op, e.Key, len(e.Mem), MaxValueLen, disklayer.ErrInvalid)
		}
	case Map:
		if e.Map == nil {
			return fmt.Errorf("%s %q: no range: %w", op, e.Key, disklayer.ErrInvalid)
		}
		if err := checkMapRange(*e.Map, s.disk.Size()); err != nil {
			return fmt.Errorf("%s %q: %w", op, e.Key, err)
		}
	default:
		return fmt.Errorf("%s %q: unknown type %q: %w", op, e.Key, e.Type, disklayer.ErrInvalid)
	}
	return nil
}

// checkMapRange checks that m lies in its file, on a chain whose disk is
// diskSize bytes.
func checkMapRange(m MapRange, diskSize int64) error {
	var size int64
	switch m.Source {
	case SourceDisk:
		size = diskSize
	case SourceHibernate:
		size = sqlitelayer.HibernateSize
	default:
		return fmt.Errorf("map source %q: want disk or hibernate: %w", m.Source, disklayer.ErrInvalid)
	}
	if m.Length <= 0 || m.Length > MaxValueLen {
		return fmt.Errorf("length %d, want 1 to %d bytes: %w", m.Length, MaxValueLen, disklayer.ErrInvalid)
	}
	if err := disklayer.CheckRange(m.Offset, m.Length, size); err != nil {
		return fmt.Errorf("%s range: %w", m.Source, err)
	}
	return nil
}

func (s *Store) mapFile(m MapRange) (disklayer.Layer, error) {
	switch m.Source {
	case SourceDisk:
		return s.disk, nil
	case SourceHibernate:
		return s.hibernate()
	}
	return nil, fmt.Errorf("map source %q: want disk or hibernate: %w", m.Source, disklayer.ErrInvalid)
}

// Retrieve returns the entry (key, typ) with its whole value
// (ds_retrieve_*). A MAP's value is its range; read it with RetrieveMap.
func (s *Store) Retrieve(key string, typ Type, owner string) (Entry, error) {
	op := fmt.Sprintf("retrieve %s", typ)
	if err := checkKey(op, key); err != nil {
		return Entry{}, err
	}
	if !typ.valid() {
		return Entry{}, fmt.Errorf("%s %q: unknown type: %w", op, key, disklayer.ErrInvalid)
	}
	var e Entry
	err := s.read(op, func(r *reader) error {
		rw, err := r.resolve(key, typ)
		if err != nil {
			return err
		}
		if err := readable(op, rw, key, owner); err != nil {
			return err
		}
		e = rw.Entry
		if typ == Map {
			snaps, err := r.snapshots(key)
			if err != nil {
				return err
			}
			for n := range snaps {
				e.Snapshots = max(e.Snapshots, n)
			}
		}
		return nil
	})
	return e, err
}

// readable refuses a missing entry and another owner's private one.
func readable(op string, rw *row, key, owner string) error {
	if rw == nil {
		return fmt.Errorf("%s %q: %w", op, key, ErrNotFound)
	}
	if rw.Private && rw.Owner != owner {
		return fmt.Errorf("%s %q: private entry of %q: %w", op, key, rw.Owner, ErrPermission)
	}
	return nil
}

// RetrieveU32 returns a U32 entry's value.
func (s *Store) RetrieveU32(key, owner string) (uint32, error) {
	e, err := s.Retrieve(key, U32, owner)
	return e.U32, err
}

// RetrieveString returns a STRING entry's value if it has at most maxLen
// bytes, and ErrTooSmall otherwise.
func (s *Store) RetrieveString(key, owner string, maxLen int) (string, error) {
	e, err := s.Retrieve(key, String, owner)
	if err != nil {
		return "", err
	}
	if len(e.String) > maxLen {
		return "", fmt.Errorf("retrieve string %q: %d bytes, the bound is %d: %w", key, len(e.String), maxLen, ErrTooSmall)
	}
	return e.String, nil
}

// RetrieveMem copies the start of a MEM entry's value into buf and
// returns the bytes copied and the value's full length (a partial
// retrieve when buf is shorter).
func (s *Store) RetrieveMem(key, owner string, buf []byte) (n, length int, err error) {
	e, err := s.Retrieve(key, Mem, owner)
	if err != nil {
		return 0, 0, err
	}
	return copy(buf, e.Mem), len(e.Mem), nil
}

// RetrieveMap copies the start of a MAP entry into buf: the range as it
// is now when snapshot is 0, else that snapshot. It returns the bytes
// copied and the full length.
func (s *Store) RetrieveMap(key, owner string, buf []byte, snapshot int) (n, length int, err error) {
	op := "retrieve map"
	e, err := s.Retrieve(key, Map, owner)
	if err != nil {
		return 0, 0, err
	}
	if snapshot == 0 {
		data, err := s.readRange(*e.Map)
		if err != nil {
			return 0, 0, fmt.Errorf("%s %q: %w", op, key, err)
		}
		return copy(buf, data), len(data), nil
	}
	var data []byte
	found := false
	err = s.read(op, func(r *reader) error {
		snaps, err := r.snapshots(key)
		if err != nil {
			return err
		}
		depth, ok := snaps[snapshot]
		if !ok {
			return nil
		}
		return r.layer(depth, func(conn *sqlite3.Conn) error {
			return query(conn, `SELECT data FROM datastore_snapshots WHERE key = ? AND snapshot = ?`, []any{key, snapshot}, func(st *sqlite3.Stmt) bool {
				data, found = st.ColumnBlob(0, []byte{}), true
				return false
			})
		})
	})
	if err != nil {
		return 0, 0, err
	}
	if !found {
		return 0, 0, fmt.Errorf("%s %q: snapshot %d: %w", op, key, snapshot, ErrNotFound)
	}
	return copy(buf, data), len(data), nil
}

func (s *Store) readRange(m MapRange) ([]byte, error) {
	file, err := s.mapFile(m)
	if err != nil {
		return nil, err
	}
	data := make([]byte, m.Length)
	if _, err := file.ReadAt(data, m.Offset); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", m.Source, m.Offset, err)
	}
	return data, nil
}

// RetrieveLabel returns the number of label name.
func (s *Store) RetrieveLabel(name, owner string) (uint32, error) {
	e, err := s.Retrieve(name, Label, owner)
	return e.Label, err
}

// RetrieveLabelName returns the name of the label with number num
// (ds_retrieve_label_name).
func (s *Store) RetrieveLabelName(num uint32, owner string) (string, error) {
	op := "retrieve label"
	var name string
	err := s.read(op, func(r *reader) error {
		rw, err := r.resolveLabelNumber(num)
		if err != nil {
			return err
		}
		if err := readable(op, rw, fmt.Sprint(num), owner); err != nil {
			return err
		}
		name = rw.Key
		return nil
	})
	return name, err
}

// Delete deletes the entry (key, typ) (ds_delete_*); only its owner may.
// Deleting a MAP deletes its snapshots. In a diff layer the deletion is a
// tombstone that hides the entry of the layers below.
func (s *Store) Delete(key string, typ Type, owner string) error {
	op := fmt.Sprintf("delete %s", typ)
	if err := checkKey(op, key); err != nil {
		return err
	}
	if !typ.valid() {
		return fmt.Errorf("%s %q: unknown type: %w", op, key, disklayer.ErrInvalid)
	}
	return s.write(op, func(r *reader) error {
		rw, err := r.resolve(key, typ)
		if err != nil {
			return err
		}
		if rw == nil {
			return fmt.Errorf("%s %q: %w", op, key, ErrNotFound)
		}
		if rw.Owner != owner {
			return fmt.Errorf("%s %q: entry of %q, only its owner deletes it: %w", op, key, rw.Owner, ErrPermission)
		}
		if typ == Map {
			snaps, err := r.snapshots(key)
			if err != nil {
				return err
			}
			if err := exec(r.top, `DELETE FROM datastore_snapshots WHERE key = ?`, key); err != nil {
				return err
			}
			for n, depth := range snaps {
				if depth == 0 {
					continue
				}
				if err := exec(r.top, `INSERT INTO datastore_snapshots (key, snapshot, data, taken_at) VALUES (?, ?, NULL, ?)`, key, n, now()); err != nil {
					return err
				}
			}
		}
		return put(r.top, rw.Entry, true)
	})
}

// SnapshotMap copies a MAP entry's range as it is now into a new
// numbered snapshot and returns its number (ds_snapshot_map).
func (s *Store) SnapshotMap(key, owner string) (int, error) {
	op := "snapshot map"
	e, err := s.Retrieve(key, Map, owner)
	if err != nil {
		return 0, err
	}
	// Read the range before the layer's write transaction: reading the
	// chain needs the top layer, which the transaction holds.
	data, err := s.readRange(*e.Map)
	if err != nil {
		return 0, fmt.Errorf("%s %q: %w", op, key, err)
	}
	var n int
	err = s.write(op, func(r *reader) error {
		rw, err := r.resolve(key, Map)
		if err != nil {
			return err
		}
		if err := readable(op, rw, key, owner); err != nil {
			return err
		}
		if *rw.Map != *e.Map {
			return fmt.Errorf("%s %q: the entry was deleted and published again meanwhile: %w", op, key, ErrNotFound)
		}
		snaps, err := r.snapshots(key)
		if err != nil {
			return err
		}
		n = 1
		for m := range snaps {
			n = max(n, m+1)
		}
		return exec(r.top, `INSERT INTO datastore_snapshots (key, snapshot, data, taken_at) VALUES (?, ?, ?, ?)
ON CONFLICT (key, snapshot) DO UPDATE SET data = excluded.data, taken_at = excluded.taken_at`, key, n, data, now())
	})
	return n, err
}

// List returns every entry of the chain, sorted by key and type, with the
// values of other owners' private entries left out.
func (s *Store) List(owner string) ([]Entry, error) {
	out, err := s.all()
	for i, e := range out {
		if e.Private && e.Owner != owner {
			out[i] = Entry{Key: e.Key, Type: e.Type, Owner: e.Owner, Private: true, Depth: e.Depth, ChangedAt: e.ChangedAt}
		}
	}
	return out, err
}

// EntryDiff is one entry that differs between two datastores: Change is
// "added" (only in B), "removed" (only in A) or "changed" (value, owner,
// privacy or, for a MAP, its range or snapshot count). Values are not
// shown: private entries stay private in a diff.
type EntryDiff struct {
	Key    string `json:"key"`
	Type   Type   `json:"type"`
	Change string `json:"change"`
}

// Diff lists the entries that differ between a and b, resolved through
// their chains, sorted by key and type.
func Diff(a, b *Store) ([]EntryDiff, error) {
	rowsA, err := a.all()
	if err != nil {
		return nil, err
	}
	rowsB, err := b.all()
	if err != nil {
		return nil, err
	}
	type id struct {
		key string
		typ Type
	}
	inB := map[id]Entry{}
	for _, e := range rowsB {
		inB[id{e.Key, e.Type}] = e
	}
	out := []EntryDiff{}
	for _, ea := range rowsA {
		k := id{ea.Key, ea.Type}
		eb, ok := inB[k]
		delete(inB, k)
		switch {
		case !ok:
			out = append(out, EntryDiff{Key: ea.Key, Type: ea.Type, Change: "removed"})
		case !sameEntry(ea, eb):
			out = append(out, EntryDiff{Key: ea.Key, Type: ea.Type, Change: "changed"})
		}
	}
	for k := range inB {
		out = append(out, EntryDiff{Key: k.key, Type: k.typ, Change: "added"})
	}
	slices.SortFunc(out, func(x, y EntryDiff) int {
		if c := strings.Compare(x.Key, y.Key); c != 0 {
			return c
		}
		return typeOrder(x.Type) - typeOrder(y.Type)
	})
	return out, nil
}

// all lists every entry with its value, private or not, and a MAP's
// snapshot count.
func (s *Store) all() ([]Entry, error) {
	var out []Entry
	err := s.read("diff", func(r *reader) error {
		rows, err := r.list()
		if err != nil {
			return err
		}
		for _, rw := range rows {
			e := rw.Entry
			if e.Type == Map {
				snaps, err := r.snapshots(e.Key)
				if err != nil {
					return err
				}
				for n := range snaps {
					e.Snapshots = max(e.Snapshots, n)
				}
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

func sameEntry(a, b Entry) bool {
	if a.Owner != b.Owner || a.Private != b.Private || a.U32 != b.U32 || a.Label != b.Label ||
		a.String != b.String || !bytes.Equal(a.Mem, b.Mem) || a.Snapshots != b.Snapshots {
		return false
	}
	if (a.Map == nil) != (b.Map == nil) {
		return false
	}
	return a.Map == nil || *a.Map == *b.Map
}
