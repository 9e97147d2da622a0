package sqlitelayer

import (
	"context"
	"time"

	"github.com/hibdisk/hibdisk/internal/store"
)

// SetPageSizeForTest makes Create use the given SQLite page size (0: the
// measured default) until the returned function restores it. Not safe to
// use from parallel tests.
func SetPageSizeForTest(pageSize int) (restore func()) {
	old := pageSizeOverride
	pageSizeOverride = pageSize
	return func() { pageSizeOverride = old }
}

// ExecForTest runs sql on the layer's own connection, inside its open
// transaction if there is one: tests use it to inject failures.
func ExecForTest(f *File, sql string) error {
	f.eng.mu.Lock()
	defer f.eng.mu.Unlock()
	return f.eng.conn.Exec(sql)
}

// TotalChangesForTest is the number of rows the layer's connection has
// inserted, updated or deleted since it was opened.
func TotalChangesForTest(f *File) int64 {
	f.eng.mu.Lock()
	defer f.eng.mu.Unlock()
	return f.eng.conn.TotalChanges()
}

// WALLimitBytes is the WAL size past which a commit waits for the
// checkpointer.
var WALLimitBytes = walLimitBytes

// SetWALBoundsForTest makes layers opened from now on request a background
// checkpoint every checkpoint bytes of WAL, wait for one at limit bytes,
// and cut the WAL back to keep bytes when it restarts, until the returned
// function restores the defaults. Not safe to use from parallel tests.
func SetWALBoundsForTest(checkpoint, limit, keep int64) (restore func()) {
	oldCheckpoint, oldLimit, oldKeep := checkpointBytes, walLimitBytes, walKeepBytes
	checkpointBytes, walLimitBytes, walKeepBytes = checkpoint, limit, keep
	return func() { checkpointBytes, walLimitBytes, walKeepBytes = oldCheckpoint, oldLimit, oldKeep }
}

// BatchBytes is the data a write batch holds before it commits early.
const BatchBytes = batchBytes

// SetIncrementalForTest makes Create make layers with (true) or without
// (false, as before auto_vacuum=INCREMENTAL) live reclaim until the
// returned function restores the default. Not safe to use from parallel
// tests.
func SetIncrementalForTest(on bool) (restore func()) {
	old := createIncremental
	createIncremental = on
	return func() { createIncremental = old }
}

// ReclaimRound is what one round of a reclaimer did.
type ReclaimRound = reclaimRound

// WatchReclaimForTest returns a channel that receives what each round of
// f's reclaimer did from now on (rounds are dropped when it is full).
func WatchReclaimForTest(f *File) <-chan ReclaimRound {
	ch := make(chan ReclaimRound, 64)
	f.eng.rc.watch.Store(&ch)
	return ch
}

// SetReclaimForTest makes layers reclaim once minBytes are free, whatever
// the file's size, quiet after the commit that freed them, until the
// returned function restores the defaults. Not safe to use from parallel
// tests.
func SetReclaimForTest(minBytes int64, quiet time.Duration) (restore func()) {
	oldMin, oldFraction, oldQuiet, oldFull := reclaimMinBytes, reclaimFraction, reclaimQuiet, reclaimFullQuiet
	reclaimMinBytes, reclaimFraction, reclaimQuiet, reclaimFullQuiet = minBytes, 1<<40, quiet, quiet
	return func() {
		reclaimMinBytes, reclaimFraction, reclaimQuiet, reclaimFullQuiet = oldMin, oldFraction, oldQuiet, oldFull
	}
}

// SetReclaimFullForTest makes reclaims of more than pages free pages take
// one transaction (reclaimFullLocked), after the quiet spell of other
// reclaims, until the returned function restores the defaults. Not safe
// to use from parallel tests.
func SetReclaimFullForTest(pages int64) (restore func()) {
	return SetReclaimFullQuietForTest(pages, reclaimQuiet)
}

// SetReclaimFullQuietForTest makes reclaims of more than pages free pages
// take one transaction, once quiet has passed without a commit, until
// the returned function restores the defaults. Not safe to use from
// parallel tests.
func SetReclaimFullQuietForTest(pages int64, quiet time.Duration) (restore func()) {
	oldPages, oldQuiet := reclaimFullPages, reclaimFullQuiet
	reclaimFullPages, reclaimFullQuiet = pages, quiet
	return func() { reclaimFullPages, reclaimFullQuiet = oldPages, oldQuiet }
}

// SetFullReclaimHookForTest runs hook as each of the reclaimer's full
// reclaims begins, with the context a request cancels, until the returned
// function restores none. Not safe to use from parallel tests.
func SetFullReclaimHookForTest(hook func(ctx context.Context)) (restore func()) {
	fullReclaimHook = hook
	return func() { fullReclaimHook = nil }
}

// AutoVacuumForTest returns the auto_vacuum mode of f's file.
func AutoVacuumForTest(f *File) (int64, error) {
	f.eng.mu.Lock()
	defer f.eng.mu.Unlock()
	return store.PragmaInt(f.eng.conn, "auto_vacuum")
}

// SettleForTest flushes f and waits for a checkpoint, after which the
// layer's file holds every committed page; it reports whether direct
// reads (direct.go) are then on.
func SettleForTest(f *File) (bool, error) {
	if err := f.Flush(); err != nil {
		return false, err
	}
	e := f.eng
	if e.ckpt != nil {
		e.ckpt.catchUp()
	}
	return e.direct != nil && e.direct.clean.Load() && !e.dirty.Load(), nil
}

// ReadWaysForTest reads [off, off+len(p)) of f's disk both ways: direct
// (ok false when direct reads could not serve it) and through SQLite,
// with the ranges each found without rows.
func ReadWaysForTest(f *File, p, q []byte, off int64) (ok bool, gapsDirect, gapsSQLite [][2]int64, err error) {
	t := f.disk
	var gd, gs []span
	ok = f.eng.direct != nil && f.eng.direct.read(p, off, &gd)
	f.eng.mu.Lock()
	err = f.eng.beginReadLocked("read")
	if err == nil {
		err = t.readLocked(q, off, &gs)
	}
	f.eng.mu.Unlock()
	for _, g := range gd {
		gapsDirect = append(gapsDirect, [2]int64{g.off, g.len})
	}
	for _, g := range gs {
		gapsSQLite = append(gapsSQLite, [2]int64{g.off, g.len})
	}
	return ok, gapsDirect, gapsSQLite, err
}

// DirectReadsForTest reports whether f reads its disk directly now.
func DirectReadsForTest(f *File) bool {
	e := f.eng
	return e.direct != nil && e.direct.clean.Load() && !e.dirty.Load()
}

// SetSummaryOffForTest makes Extents ignore allocation summaries (and
// map from the rows) until the returned function restores it.
func SetSummaryOffForTest(off bool) (restore func()) {
	old := summaryOff
	summaryOff = off
	return func() { summaryOff = old }
}
