package sqlitelayer

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/hibdisk/hibdisk/disklayer"
)

// Write-back bounds.
const (
	// writeBackBytes bounds the sector data accepted and not yet applied;
	// a write that would pass it waits for the applier.
	writeBackBytes = 32 << 20
	// writeBackMaxWrite is the largest write taken by write-back; larger
	// ones are applied by the caller (after what is pending), since
	// copying them buys no overlap.
	writeBackMaxWrite = 1 << 20
	// applyBlocks bounds the blocks applied per hold of the engine's lock,
	// so that reads are not held up for long behind the applier.
	applyBlocks = 256
)

// writeBack lets whole-sector writes return once their data is copied:
// a goroutine of its own (the applier) stores them in the open write
// batch, on the other core, while the caller takes its next request.
// Under fio's 4 KiB random writes through the NBD server the SQLite
// upsert was most of every request's time, spent on the connection's
// own goroutine between reading a request and reading the next.
//
// What it changes is only when the rows are written. Every other request
// on the engine first applies what is pending (engine.lock), except reads
// and maps, which apply it only when it overlaps their range; the applier
// holds the engine's lock while it applies. So every request sees every
// write that returned before it. Flush applies everything before it
// commits, so a write that returned before a completed Flush is as
// durable as it was before. A write that fails when applied cannot fail
// its caller any more: it becomes the engine's sticky failure, as a
// failed commit does, and every later request (Flush included) returns
// it.
//
// Lock order: engine.mu, then writeBack.mu.
type writeBack struct {
	t *blockTable

	// open: writes may be accepted (the engine is open, writable and has
	// not failed). Checked without the engine's lock; the applier
	// applies whatever was accepted.
	open atomic.Bool

	mu      sync.Mutex
	cond    sync.Cond         // signalled when pending data is applied or dropped
	pending map[int64]*[]byte // block number -> its newest data
	bytes   int64             // pending blocks × block size (zero blocks too: it bounds the backlog)
	stopped bool              // the engine is closing: accept nothing

	kick  chan struct{} // buffered 1: there is something to apply
	done  chan struct{} // closed when the applier exits
	bufs  sync.Pool     // *[]byte of one block
	zero  *[]byte       // a pending all-zero block: zeroBlock[:blockSize], never pooled
	order []int64       // sorted pending keys not yet applied; guarded by mu
	// fresh: keys that became pending since order was taken, in the order
	// they came; guarded by mu. Every pending key is in order or fresh.
	// (Taking order by ranging over pending cost the applier 5% of a
	// qemu-img bench -w pass: a Go map does not shrink, and ranging over
	// one that once held a 32 MiB backlog visits all its slots.)
	fresh []int64

	// Scratch of applyLocked; guarded by the engine's lock.
	applyKeys []int64
	applyBufs []*[]byte
}

func newWriteBack(t *blockTable) *writeBack {
	wb := &writeBack{t: t, pending: map[int64]*[]byte{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
	wb.cond.L = &wb.mu
	bs := t.blockSize
	wb.bufs.New = func() any { b := make([]byte, bs); return &b }
	zero := zeroBlock[:bs]
	wb.zero = &zero
	wb.open.Store(true)
	go wb.run()
	return wb
}

// write takes p (whole blocks at the block-aligned off) if write-back is
// open, and reports whether it did; if not, the caller writes p itself
// and gets the reason write-back is closed from the engine.
func (wb *writeBack) write(p []byte, off int64) bool {
	if !wb.open.Load() || len(p) > writeBackMaxWrite || wb.t.e.readOnlyColumn.Load() {
		return false
	}
	bs := wb.t.blockSize
	wb.mu.Lock()
	for wb.bytes > 0 && wb.bytes+int64(len(p)) > writeBackBytes && !wb.stopped && wb.open.Load() {
		wb.cond.Wait()
	}
	if wb.stopped || !wb.open.Load() {
		wb.mu.Unlock()
		return false
	}
	// Before the write returns, under mu (see engine.cleanLocked).
	wb.t.e.dirty.Store(true)
	first := off / int64(bs)
	for i := 0; i*bs < len(p); i++ {
		key := first + int64(i)
		data := p[i*bs : (i+1)*bs]
		buf, ok := wb.pending[key]
		if !ok {
			wb.bytes += int64(bs)
			wb.fresh = append(wb.fresh, key)
		}
		// An all-zero block becomes a tombstone or no row, never data:
		// hold it as wb.zero rather than copy it.
		if bytes.Equal(data, zeroBlock[:bs]) {
			if ok {
				wb.put(buf)
			}
			wb.pending[key] = wb.zero
			continue
		}
		if !ok || buf == wb.zero {
			buf = wb.bufs.Get().(*[]byte)
			wb.pending[key] = buf
		}
		copy(*buf, data)
	}
	// Under mu, so that stopLocked cannot have closed kick.
	select {
	case wb.kick <- struct{}{}:
	default:
	}
	wb.mu.Unlock()
	return true
}

// put returns a block buffer taken by write to the pool.
func (wb *writeBack) put(b *[]byte) {
	if b != wb.zero {
		wb.bufs.Put(b)
	}
}

// run is the applier.
func (wb *writeBack) run() {
	defer close(wb.done)
	e := wb.t.e
	for range wb.kick {
		for {
			e.yieldReclaim()
			e.mu.Lock()
			more := wb.applyLocked(applyBlocks)
			e.mu.Unlock()
			if !more {
				break
			}
		}
	}
}

// overlaps reports whether any block in [first, last] is pending.
func (wb *writeBack) overlaps(first, last int64) bool {
	wb.mu.Lock()
	defer wb.mu.Unlock()
	if len(wb.pending) == 0 {
		return false
	}
	if last-first >= int64(len(wb.pending)) {
		for key := range wb.pending {
			if key >= first && key <= last {
				return true
			}
		}
		return false
	}
	for key := first; key <= last; key++ {
		if _, ok := wb.pending[key]; ok {
			return true
		}
	}
	return false
}

// drainLocked applies everything pending. Called with the engine's lock
// held; a failure becomes the engine's sticky failure.
func (wb *writeBack) drainLocked() {
	for wb.applyLocked(applyBlocks) {
	}
}

// applyLocked applies up to n pending blocks, in block order, into the
// write batch, and reports whether more are pending. Called with the
// engine's lock held.
func (wb *writeBack) applyLocked(n int) bool {
	e, t := wb.t.e, wb.t
	wb.mu.Lock()
	if len(wb.pending) == 0 {
		wb.mu.Unlock()
		return false
	}
	// Blocks go in key order, from a sorted snapshot of the pending keys
	// taken when the last one ran out; blocks written since wait for the
	// next snapshot, and keys applied since (by a drain) are skipped.
	if len(wb.order) == 0 {
		wb.order, wb.fresh = wb.fresh, nil
		slices.Sort(wb.order)
	}
	keys, bufs := wb.applyKeys[:0], wb.applyBufs[:0]
	for len(keys) < n && len(wb.order) > 0 {
		key := wb.order[0]
		wb.order = wb.order[1:]
		if buf, ok := wb.pending[key]; ok {
			keys = append(keys, key)
			bufs = append(bufs, buf)
			delete(wb.pending, key)
		}
	}
	if len(wb.order) == 0 {
		wb.order = wb.order[:0:0] // let the emptied array go
	}
	wb.mu.Unlock()
	wb.applyKeys, wb.applyBufs = keys, bufs

	// A loss for lack of space does not stop the applier: these writes
	// returned after the lost batch and go into a new one.
	err := e.failure
	if err == nil && e.closed {
		err = fmt.Errorf("write %q: %w", e.path, disklayer.ErrClosed)
	}
	if err == nil {
		err = e.beginLocked("write")
	}
	if err == nil {
		err = t.storeLocked(len(keys),
			func(i int) int64 { return keys[i] },
			func(i int) []byte { return *bufs[i] })
		// Accepted writes are applied even if the layer was marked
		// read-only since: they were accepted before.
		if aerr := e.afterWriteLocked("write", int64(len(keys)*t.blockSize), err); aerr != nil {
			err = aerr
		}
	}
	for i, b := range bufs {
		wb.put(b)
		bufs[i] = nil
	}
	switch {
	case err == nil || e.failure != nil:
	case errors.Is(err, disklayer.ErrNoSpace):
		// These writes had returned: they are lost with the batch
		// (which the failed statement may have left open).
		lerr := fmt.Errorf("write %q: a write that had returned could not be applied, writes since the last flush are lost: %w", e.path, err)
		if e.loseBatchLocked(lerr) == lerr {
			var lost []blockSpan
			for _, k := range keys {
				if n := len(lost); n > 0 && lost[n-1].last+1 == k {
					lost[n-1].last = k
				} else {
					lost = append(lost, blockSpan{k, k})
				}
			}
			t.loseLocked(lost, lerr)
		}
	default:
		e.fail(fmt.Errorf("write %q: a write that had returned could not be applied, writes since the last flush may be lost: %w", e.path, err))
	}
	wb.mu.Lock()
	wb.bytes -= int64(len(keys) * t.blockSize)
	if e.failure != nil {
		// Nothing more can be applied: drop it and let waiting writers
		// see the failure.
		wb.open.Store(false)
		for key, b := range wb.pending {
			wb.put(b)
			delete(wb.pending, key)
		}
		wb.order, wb.fresh = nil, nil
		wb.bytes = 0
	}
	more := len(wb.pending) > 0
	wb.cond.Broadcast()
	wb.mu.Unlock()
	return more
}

// stopLocked closes write-back for good: it applies what is pending and
// stops the applier. Called with the engine's lock held, by Close. The
// applier may be waiting for the lock, so it is not waited for here;
// File.Close calls wait after it releases the lock.
func (wb *writeBack) stopLocked() {
	wb.mu.Lock()
	wb.stopped = true
	wb.open.Store(false)
	close(wb.kick)
	wb.cond.Broadcast()
	wb.mu.Unlock()
	wb.drainLocked()
}

// reopen accepts writes again after a loss for lack of space was
// reported, unless the layer is closing or has failed for good. Called
// with the engine's lock held.
func (wb *writeBack) reopen() {
	wb.mu.Lock()
	if !wb.stopped && wb.t.e.failure == nil {
		wb.open.Store(true)
	}
	wb.mu.Unlock()
}

// wait waits for the applier to exit (after stopLocked).
func (wb *writeBack) wait() { <-wb.done }

// lock takes the engine's lock and applies what write-back holds, so the
// caller sees every write that returned before.
func (e *engine) lock() {
	e.yieldReclaim()
	e.mu.Lock()
	if e.wb != nil {
		e.wb.drainLocked()
	}
}

// lockFor takes the engine's lock for a read of blocks [first, last] of
// t, applying what write-back holds only if some of it is in the range.
func (e *engine) lockFor(t *blockTable, first, last int64) {
	e.yieldReclaim()
	e.mu.Lock()
	if e.wb != nil && e.wb.t == t && e.wb.overlaps(first, last) {
		e.wb.drainLocked()
	}
}

// fail makes err the sticky failure. Called with the engine's lock held.
func (e *engine) fail(err error) {
	e.failure = err
	e.failed.Store(true)
	if e.wb != nil {
		e.wb.open.Store(false)
	}
}
