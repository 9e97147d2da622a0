package datastore

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
)

// compilePattern anchors pattern to whole keys, as MINIX does with
// "^pattern$".
func compilePattern(op, pattern string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + pattern + `)$`)
	if err != nil {
		return nil, fmt.Errorf("%s: pattern %q: %v: %w", op, pattern, err, disklayer.ErrInvalid)
	}
	return re, nil
}

// matcher decides which changes a subscription reports.
type matcher struct {
	owner string
	re    *regexp.Regexp
	types []Type // empty: all
}

func (m matcher) match(e Entry) bool {
	if e.Private && e.Owner != m.owner {
		return false
	}
	if len(m.types) > 0 && !slices.Contains(m.types, e.Type) {
		return false
	}
	return m.re.MatchString(e.Key)
}

func joinTypes(types []Type) string {
	s := make([]string, len(types))
	for i, t := range types {
		s[i] = string(t)
	}
	return strings.Join(s, ",")
}

func splitTypes(s string) []Type {
	if s == "" {
		return nil
	}
	var out []Type
	for _, t := range strings.Split(s, ",") {
		out = append(out, Type(t))
	}
	return out
}

// Subscribe subscribes owner to the entries whose whole key matches
// pattern and whose type is in types (empty: every type) (ds_subscribe).
// An owner has one subscription: subscribing again fails with ErrExists
// unless flags has Overwrite, which replaces it and forgets what it had
// not yet reported. With Initial, every existing match is reported by the
// next Checks; without, only changes from now on.
func (s *Store) Subscribe(owner, pattern string, types []Type, flags Flags) error {
	op := "subscribe"
	re, err := compilePattern(op, pattern)
	if err != nil {
		return err
	}
	for _, t := range types {
		if !t.valid() {
			return fmt.Errorf("%s: unknown type %q: %w", op, t, disklayer.ErrInvalid)
		}
	}
	m := matcher{owner: owner, re: re, types: types}
	return s.write(op, func(r *reader) error {
		old, err := subscription(r.top, owner)
		if err != nil {
			return err
		}
		if old != nil {
			if flags&Overwrite == 0 {
				return fmt.Errorf("%s %q: already subscribed to %q: %w (use overwrite)", op, owner, old.Pattern, ErrExists)
			}
			if err := exec(r.top, `DELETE FROM datastore_subscriptions WHERE owner = ?`, owner); err != nil {
				return err
			}
		}
		cursor, err := nextSeq(r.top)
		if err != nil {
			return err
		}
		if err := exec(r.top, `INSERT INTO datastore_subscriptions (owner, pattern, types, cursor) VALUES (?, ?, ?, ?)`,
			owner, pattern, joinTypes(types), cursor-1); err != nil {
			return err
		}
		if flags&Initial == 0 {
			return nil
		}
		rows, err := r.list()
		if err != nil {
			return err
		}
		for _, rw := range rows {
			if m.match(rw.Entry) {
				if err := exec(r.top, `INSERT INTO datastore_pending (owner, key, type) VALUES (?, ?, ?)`, owner, rw.Key, string(rw.Type)); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Unsubscribe deletes owner's subscription.
func (s *Store) Unsubscribe(owner string) error {
	return s.write("unsubscribe", func(r *reader) error {
		old, err := subscription(r.top, owner)
		if err != nil {
			return err
		}
		if old == nil {
			return fmt.Errorf("unsubscribe %q: %w", owner, ErrNotFound)
		}
		return exec(r.top, `DELETE FROM datastore_subscriptions WHERE owner = ?`, owner)
	})
}

// Subscription returns owner's subscription, or ErrNotFound.
func (s *Store) Subscription(owner string) (Subscription, error) {
	var sub *Subscription
	err := s.read("subscription", func(r *reader) error {
		if r.top == nil {
			return nil
		}
		var err error
		sub, err = subscription(r.top, owner)
		return err
	})
	if err == nil && sub == nil {
		err = fmt.Errorf("subscription %q: %w", owner, ErrNotFound)
	}
	if err != nil {
		return Subscription{}, err
	}
	return *sub, nil
}

func subscription(conn *sqlite3.Conn, owner string) (*Subscription, error) {
	var sub *Subscription
	err := query(conn, `SELECT pattern, types, cursor FROM datastore_subscriptions WHERE owner = ?`, []any{owner}, func(st *sqlite3.Stmt) bool {
		sub = &Subscription{Owner: owner, Pattern: st.ColumnText(0), Types: splitTypes(st.ColumnText(1)), Cursor: st.ColumnInt64(2)}
		return false
	})
	return sub, err
}

// Check returns one entry that changed since owner's last Check, and
// false when there is none (ds_check). Initial reports come first, then
// changes in the order they were made; an entry changed several times is
// reported once, as changed last. Each report is committed before Check
// returns it (a subscriber restarted later continues after it).
func (s *Store) Check(owner string) (Change, bool, error) {
	op := "check"
	// Look first with a read, so that a subscriber polling an unchanged
	// datastore does not write.
	var due bool
	err := s.read(op, func(r *reader) error {
		if r.top == nil {
			return fmt.Errorf("%s %q: %w", op, owner, ErrNotFound)
		}
		var err error
		due, err = s.nextChange(r, owner, false, nil)
		return err
	})
	if err != nil || !due {
		return Change{}, false, err
	}
	var c Change
	var found bool
	err = s.write(op, func(r *reader) error {
		var err error
		found, err = s.nextChange(r, owner, true, &c)
		return err
	})
	return c, found, err
}

// nextChange finds owner's next report; with consume it also removes it
// (and advances the cursor past changes the subscription does not match).
func (s *Store) nextChange(r *reader, owner string, consume bool, c *Change) (bool, error) {
	op := "check"
	sub, err := subscription(r.top, owner)
	if err != nil {
		return false, err
	}
	if sub == nil {
		return false, fmt.Errorf("%s %q: no subscription: %w", op, owner, ErrNotFound)
	}
	re, err := compilePattern(op, sub.Pattern)
	if err != nil {
		return false, err
	}
	m := matcher{owner: owner, re: re, types: sub.Types}

	// Initial reports. One whose entry changed after the cursor is left
	// to the change scan below, which reports it once.
	type pending struct {
		rowid int64
		key   string
		typ   Type
	}
	var pend []pending
	err = query(r.top, `SELECT p.rowid, p.key, p.type FROM datastore_pending p
LEFT JOIN datastore d ON d.key = p.key AND d.type = p.type AND d.seq > ?
WHERE p.owner = ? AND d.key IS NULL ORDER BY p.rowid LIMIT 1`, []any{sub.Cursor, owner}, func(st *sqlite3.Stmt) bool {
		pend = append(pend, pending{st.ColumnInt64(0), st.ColumnText(1), Type(st.ColumnText(2))})
		return false
	})
	if err != nil {
		return false, err
	}
	if len(pend) > 0 {
		if !consume {
			return true, nil
		}
		p := pend[0]
		if err := exec(r.top, `DELETE FROM datastore_pending WHERE rowid = ?`, p.rowid); err != nil {
			return false, err
		}
		rw, err := r.resolve(p.key, p.typ)
		if err != nil {
			return false, err
		}
		*c = Change{Key: p.key, Type: p.typ, Deleted: rw == nil}
		if rw != nil {
			c.Owner = rw.Owner
		}
		return true, nil
	}

	// Changes after the cursor, oldest first.
	var hit *row
	last := sub.Cursor
	err = query(r.top, `SELECT `+rowColumns+` FROM datastore WHERE seq > ? ORDER BY seq`, []any{sub.Cursor}, func(st *sqlite3.Stmt) bool {
		rw := scanRow(st, 0)
		last = rw.seq
		if m.match(rw.Entry) {
			hit = &rw
			return false
		}
		return true
	})
	if err != nil {
		return false, err
	}
	if !consume {
		return hit != nil, nil
	}
	if last != sub.Cursor {
		if err := exec(r.top, `UPDATE datastore_subscriptions SET cursor = ? WHERE owner = ?`, last, owner); err != nil {
			return false, err
		}
	}
	if hit == nil {
		return false, nil
	}
	if err := exec(r.top, `DELETE FROM datastore_pending WHERE owner = ? AND key = ? AND type = ?`, owner, hit.Key, string(hit.Type)); err != nil {
		return false, err
	}
	*c = Change{Key: hit.Key, Type: hit.Type, Owner: hit.Owner, Deleted: hit.deleted}
	return true, nil
}

// PollInterval is how often Wait looks for commits.
const PollInterval = 10 * time.Millisecond

// Version identifies the state of the top layer's database: it changes
// whenever any connection, in any process, commits to it (SQLite's
// data_version as seen by the Store's own connection).
func (s *Store) Version() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watch == nil {
		return 0, nil
	}
	st, _, err := s.watch.Prepare(`PRAGMA data_version`)
	if err != nil {
		return 0, fmt.Errorf("datastore version of %q: %w", s.path, err)
	}
	defer st.Close()
	if !st.Step() {
		return 0, fmt.Errorf("datastore version of %q: %w", s.path, st.Err())
	}
	return st.ColumnInt64(0), nil
}

// Wait returns when the top layer's Version differs from v, or with
// ctx's error. It polls every PollInterval (a PRAGMA on the Store's own
// connection, no file I/O unless something changed).
func (s *Store) Wait(ctx context.Context, v int64) error {
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for {
		now, err := s.Version()
		if err != nil || now != v {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
