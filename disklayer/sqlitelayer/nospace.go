package sqlitelayer

import (
	"fmt"
	"slices"

	"github.com/hibdisk/hibdisk/disklayer"
)

// A full filesystem. A commit that fails for lack of space (ErrNoSpace)
// loses its whole batch: the writes since the last completed Flush that
// had already returned. The layer then keeps what is needed to never
// pass a lost write off as done, without making the whole layer unusable
// as a sticky failure would:
//
//   - each table remembers which blocks the lost batch had written
//     (lost) and fails reads of them with ErrWriteLost, since it holds
//     their older content; Extents reports them as Data, so that a
//     client skipping holes reads them and gets the error. A write of a
//     whole block replaces the lost write; a partial write of a lost
//     block fails like its read.
//   - each table that had writes in the batch owes its caller the
//     news (lostErr): its next Flush returns the loss instead of
//     committing, and until then its writes and zeroes are refused with
//     the same error, so nothing written after the loss can be covered
//     by a Flush that looks successful. After that Flush, writes are
//     accepted again; while the filesystem stays full they fail again
//     (the next commit, at the latest), and once space is freed they
//     succeed.
//
// The lost set is bounded by what one batch can write (batchBytes of
// data; a zeroed range is one span) and lives in memory only: after the
// layer is closed and opened again, the lost blocks read their older
// content. Close returns a loss that no Flush has reported.

// blockSpan is the blocks [first, last] of a table.
type blockSpan struct{ first, last int64 }

// noteWrittenLocked records that the open batch wrote blocks
// [first, last]: they are lost if the batch is, and no longer hold a
// lost write.
func (t *blockTable) noteWrittenLocked(first, last int64) {
	if n := len(t.batch); n > 0 && t.batch[n-1].first <= first && first <= t.batch[n-1].last+1 {
		t.batch[n-1].last = max(t.batch[n-1].last, last)
	} else {
		t.batch = append(t.batch, blockSpan{first, last})
	}
	if len(t.lost) > 0 {
		t.lost = subtractSpan(t.lost, first, last)
		t.hasLost.Store(len(t.lost) > 0)
	}
}

// noteKeysWrittenLocked is noteWrittenLocked for n ascending keys.
func (t *blockTable) noteKeysWrittenLocked(n int, key func(int) int64) {
	for i := 0; i < n; {
		j := i + 1
		for j < n && key(j) == key(j-1)+1 {
			j++
		}
		t.noteWrittenLocked(key(i), key(j-1))
		i = j
	}
}

// lostIn returns the first lost block in [first, last], if any.
func (t *blockTable) lostIn(first, last int64) (int64, bool) {
	for _, s := range t.lost {
		if s.last >= first && s.first <= last {
			return max(s.first, first), true
		}
	}
	return 0, false
}

// lostError is the error of a read that touches lost block key.
func (t *blockTable) lostError(key int64) error {
	return fmt.Errorf("read %q %s %s %d: %w", t.e.path, t.table, t.key, key, disklayer.ErrWriteLost)
}

// loseBatchLocked ends the open batch after a failure for lack of space
// that lost it (err says so and wraps ErrNoSpace): it rolls the batch
// back unless SQLite has, moves what it had written to the tables' lost
// blocks, and makes every table that lost writes owe err to its next
// Flush. It returns err. Called with mu held.
func (e *engine) loseBatchLocked(err error) error {
	if e.inTx && !e.conn.GetAutocommit() {
		if rerr := e.rollback.Exec(); rerr != nil {
			e.inTx = false
			e.fail(fmt.Errorf("%w; rolling the batch back failed too: %w", err, mapStoreError(rerr)))
			return e.failure
		}
	}
	e.inTx, e.writeTx, e.pendingBytes, e.contentChanged = false, false, 0, false
	for _, t := range e.tables {
		if len(t.batch) == 0 {
			continue
		}
		t.loseLocked(t.batch, err)
		t.batch = t.batch[:0]
	}
	return err
}

// loseLocked adds spans to the lost blocks and makes the table owe err.
func (t *blockTable) loseLocked(spans []blockSpan, err error) {
	t.lost = mergeSpans(t.lost, spans)
	t.hasLost.Store(len(t.lost) > 0)
	if t.lostErr == nil {
		t.lostErr = err
	}
	if wb := t.e.wb; wb != nil && wb.t == t {
		wb.open.Store(false) // writes are refused until the loss is reported
	}
}

// flushLocked is the table's Flush: it reports a loss the table owes,
// once, and otherwise commits the batch; a commit that loses the batch
// reports its own loss. Called with mu held.
func (t *blockTable) flushLocked(op string) error {
	if err := t.lostErr; err != nil {
		t.reportedLocked()
		return fmt.Errorf("%s %q %s: %w", op, t.e.path, t.table, err)
	}
	err := t.e.commitLocked(op)
	if err != nil && t.lostErr != nil {
		t.reportedLocked()
	}
	return err
}

// reportedLocked records that the table's loss was reported: writes are
// accepted again.
func (t *blockTable) reportedLocked() {
	t.lostErr = nil
	if wb := t.e.wb; wb != nil && wb.t == t {
		wb.reopen()
	}
}

// mergeSpans returns the union of a (sorted, disjoint, as lost is) and
// b, sorted and with adjacent spans merged.
func mergeSpans(a, b []blockSpan) []blockSpan {
	all := append(slices.Clone(a), b...)
	slices.SortFunc(all, func(x, y blockSpan) int {
		switch {
		case x.first < y.first:
			return -1
		case x.first > y.first:
			return 1
		}
		return 0
	})
	out := all[:0]
	for _, s := range all {
		if n := len(out); n > 0 && s.first <= out[n-1].last+1 {
			out[n-1].last = max(out[n-1].last, s.last)
			continue
		}
		out = append(out, s)
	}
	return out
}

// subtractSpan returns spans without the blocks [first, last]. spans is
// not modified when nothing overlaps.
func subtractSpan(spans []blockSpan, first, last int64) []blockSpan {
	overlaps := false
	for _, s := range spans {
		if s.last >= first && s.first <= last {
			overlaps = true
			break
		}
	}
	if !overlaps {
		return spans
	}
	out := make([]blockSpan, 0, len(spans)+1)
	for _, s := range spans {
		if s.last < first || s.first > last {
			out = append(out, s)
			continue
		}
		if s.first < first {
			out = append(out, blockSpan{s.first, first - 1})
		}
		if s.last > last {
			out = append(out, blockSpan{last + 1, s.last})
		}
	}
	return out
}

// lostAsData passes x on to emit with the parts that overlap lost
// blocks (sorted byte spans of bs-byte blocks) turned into Data, and
// reports whether emit wants more.
func lostAsData(x disklayer.Extent, lost []blockSpan, bs int64, emit func(disklayer.Extent) bool) bool {
	if x.Kind == disklayer.Data {
		return emit(x)
	}
	for _, s := range lost {
		lo, hi := s.first*bs, (s.last+1)*bs
		if hi <= x.Off || lo >= x.End() {
			continue
		}
		if lo > x.Off {
			if !emit(disklayer.Extent{Off: x.Off, Len: lo - x.Off, Kind: x.Kind}) {
				return false
			}
			x.Len -= lo - x.Off
			x.Off = lo
		}
		n := min(hi, x.End()) - x.Off
		if !emit(disklayer.Extent{Off: x.Off, Len: n, Kind: disklayer.Data}) {
			return false
		}
		x.Off, x.Len = x.Off+n, x.Len-n
		if x.Len == 0 {
			return true
		}
	}
	return emit(x)
}
