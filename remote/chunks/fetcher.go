package chunks

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// fetcher is what Reader and PageReader share: their Source, at most
// Options.Parallel fetches in flight, and retries with back-off while the
// Source fails, bounded by maxWait.
type fetcher struct {
	src     Source
	maxWait time.Duration
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	slots   chan struct{} // Source fetches in flight
	retries atomic.Int64  // failed fetches that were retried

	downMu sync.Mutex
	// downSince: when the Source started failing, zero while it works.
	downSince time.Time
}

// init readies f for src, with opts' MaxWait and Parallel (set).
func (f *fetcher) init(src Source, opts Options) {
	f.src, f.maxWait, f.slots = src, opts.MaxWait, make(chan struct{}, opts.Parallel)
	f.ctx, f.cancel = context.WithCancel(context.Background())
}

// fetch gets n bytes at off from the Source, retrying transient failures
// with back-off until the Source has been failing for maxWait, or for as
// long as the bytes have been wanted (since start, which counts waiting
// on another process that fetched and failed): a read fails within about
// maxWait of needing a dead store, however many processes take turns at
// a lock. The bytes are not verified here. Errors are ErrClosed once
// Close was called, ErrGone as the Source said it, or ErrUnavailable;
// the caller says which bytes.
func (f *fetcher) fetch(off, n int64, start time.Time) ([]byte, error) {
	backoff := firstBackoff
	for {
		b, err := f.fetchOnce(off, n)
		if err == nil {
			f.up()
			return b, nil
		}
		if f.ctx.Err() != nil {
			return nil, ErrClosed
		}
		if errors.Is(err, ErrGone) {
			return nil, err
		}
		waited := time.Since(f.down(start))
		if waited >= f.maxWait {
			return nil, fmt.Errorf("%w: failing for %v: %w", ErrUnavailable, waited.Round(time.Millisecond), err)
		}
		f.retries.Add(1)
		sleep := min(backoff+rand.N(backoff/4+1), f.maxWait-waited)
		select {
		case <-f.ctx.Done():
			return nil, ErrClosed
		case <-time.After(sleep):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// fetchOnce is one Source fetch, in one of the slots.
func (f *fetcher) fetchOnce(off, n int64) ([]byte, error) {
	select {
	case f.slots <- struct{}{}:
	case <-f.ctx.Done():
		return nil, f.ctx.Err()
	}
	defer func() { <-f.slots }()
	return f.src.Fetch(f.ctx, off, n)
}

// down notes a failed fetch of bytes wanted since start, and returns
// since when the Source counts as failing: since the first failure
// after the last success, or since start if that is earlier (the wait
// for another process's fetch, which failed, counts). Later reads then
// fail at once, without a wait of their own. up notes a success.
func (f *fetcher) down(start time.Time) time.Time {
	f.downMu.Lock()
	defer f.downMu.Unlock()
	if f.downSince.IsZero() || start.Before(f.downSince) {
		f.downSince = start
	}
	return f.downSince
}

func (f *fetcher) up() {
	f.downMu.Lock()
	f.downSince = time.Time{}
	f.downMu.Unlock()
}

// closedOr is ErrClosed once Close was called, else err.
func (f *fetcher) closedOr(err error) error {
	if f.ctx.Err() != nil {
		return ErrClosed
	}
	return err
}
