package datastore

import (
	"context"
	"errors"
	"slices"
)

// FollowOptions configure Follow.
type FollowOptions struct {
	// Owner is the subscriber: one subscription per owner.
	Owner string
	// Pattern and Types are the subscription (see Subscribe).
	Pattern string
	Types   []Type
	// Flags are Subscribe's: Initial reports the existing matches first
	// (only when a new subscription is made), Overwrite replaces the
	// owner's subscription even when it is the same.
	Flags Flags
	// Once reports what changed since the subscriber's last Check and
	// returns, instead of following.
	Once bool
}

// Follow reports the changes of opts.Owner's subscription to report,
// one Change per call, in the order Check returns them.
//
// An existing subscription of the owner with the same pattern and types
// is resumed where its cursor stands, unless opts.Flags has Overwrite;
// otherwise Follow subscribes (which fails with ErrExists for a
// different subscription without Overwrite). Then it reports every
// pending change, and unless opts.Once waits for the next commit and
// repeats, until ctx ends, when it returns nil: cancelling is the way to
// stop following. An error of ds or of report ends it.
//
// A change is consumed (the cursor advances) before report sees it, as
// with Check: a change whose report fails is not reported again.
func Follow(ctx context.Context, ds API, opts FollowOptions, report func(Change) error) error {
	sub, err := ds.Subscription(opts.Owner)
	resume := err == nil && sub.Pattern == opts.Pattern && slices.Equal(sub.Types, opts.Types) && opts.Flags&Overwrite == 0
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if !resume {
		if err := ds.Subscribe(opts.Owner, opts.Pattern, opts.Types, opts.Flags); err != nil {
			return err
		}
	}
	for {
		v, err := ds.Version()
		if err != nil {
			return err
		}
		for {
			c, ok, err := ds.Check(opts.Owner)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if err := report(c); err != nil {
				return err
			}
		}
		if opts.Once {
			return nil
		}
		if err := ds.Wait(ctx, v); err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: the way to stop following
			}
			return err
		}
	}
}
