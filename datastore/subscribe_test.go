package datastore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/datastore"
	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/lock"
)

func change(key string, typ datastore.Type, owner string) datastore.Change {
	return datastore.Change{Key: key, Type: typ, Owner: owner}
}

func TestSubscribeRules(t *testing.T) {
	s := mustOpen(t, newBase(t))
	_, _, err := s.Check("w")
	wantErr(t, "check without a subscription", err, datastore.ErrNotFound)
	wantErr(t, "pattern that does not compile", s.Subscribe("w", "drv(", nil, 0), disklayer.ErrInvalid)
	wantErr(t, "unknown type", s.Subscribe("w", ".*", []datastore.Type{"float"}, 0), disklayer.ErrInvalid)

	must(t, s.PublishU32("drv.before", 1, "p", 0))
	must(t, s.Subscribe("w", `drv\..*`, []datastore.Type{datastore.U32, datastore.String}, 0))
	wantErr(t, "subscribe twice", s.Subscribe("w", ".*", nil, 0), datastore.ErrExists)

	if got := drain(t, s, "w"); len(got) != 0 {
		t.Errorf("without Initial, existing entries were reported: %v", got)
	}
	must(t, s.PublishU32("drv.a", 1, "p", 0))
	must(t, s.PublishString("drv.b", "x", "p", 0))
	must(t, s.PublishMem("drv.c", []byte{1}, "p", 0))           // type not subscribed
	must(t, s.PublishU32("xdrv.a", 1, "p", 0))                  // the pattern matches whole keys
	must(t, s.PublishU32("drv.a", 2, "p", datastore.Overwrite)) // reported once, as changed last
	must(t, s.PublishU32("drv.a", 3, "p", datastore.Overwrite))
	must(t, s.Delete("drv.before", datastore.U32, "p"))
	want := []datastore.Change{
		change("drv.b", datastore.String, "p"),
		change("drv.a", datastore.U32, "p"),
		{Key: "drv.before", Type: datastore.U32, Owner: "p", Deleted: true},
	}
	if got := drain(t, s, "w"); !cmp.Equal(got, want) {
		t.Errorf("changes:\n%s", cmp.Diff(want, got))
	}

	// Overwrite replaces the subscription; Initial reports what exists.
	must(t, s.Subscribe("w", `drv\..*`, nil, datastore.Overwrite|datastore.Initial))
	must(t, s.PublishMem("drv.c", []byte{2}, "p", datastore.Overwrite)) // already pending: reported once
	want = []datastore.Change{
		change("drv.a", datastore.U32, "p"),
		change("drv.b", datastore.String, "p"),
		change("drv.c", datastore.Mem, "p"),
	}
	if got := drain(t, s, "w"); !cmp.Equal(got, want) {
		t.Errorf("initial changes:\n%s", cmp.Diff(want, got))
	}
	sub, err := s.Subscription("w")
	if err != nil || sub.Pattern != `drv\..*` || len(sub.Types) != 0 {
		t.Errorf("Subscription = %+v, %v", sub, err)
	}
	must(t, s.Unsubscribe("w"))
	wantErr(t, "unsubscribe twice", s.Unsubscribe("w"), datastore.ErrNotFound)
	_, _, err = s.Check("w")
	wantErr(t, "check after unsubscribe", err, datastore.ErrNotFound)
}

// TestSubscriberRestart: a subscriber that stops and starts again (the
// layer closed and reopened) continues after the last change it was told
// of, and is told of what changed while it was down.
func TestSubscriberRestart(t *testing.T) {
	path := newBase(t)
	s, _, closeAll := open(t, path, diffdisk.Options{})
	must(t, s.Subscribe("agent", "k.*", nil, 0))
	must(t, s.PublishU32("k1", 1, "p", 0))
	must(t, s.PublishU32("k2", 2, "p", 0))
	must(t, s.PublishU32("k3", 3, "p", 0))
	c, ok, err := s.Check("agent")
	if err != nil || !ok || c.Key != "k1" {
		t.Fatalf("first check = %+v, %v, %v", c, ok, err)
	}
	closeAll()

	// Changes while the subscriber is down.
	s2, _, closeAll := open(t, path, diffdisk.Options{})
	must(t, s2.Delete("k3", datastore.U32, "p"))
	must(t, s2.PublishU32("k4", 4, "p", 0))
	closeAll()

	s3 := mustOpen(t, path)
	want := []datastore.Change{
		change("k2", datastore.U32, "p"),
		{Key: "k3", Type: datastore.U32, Owner: "p", Deleted: true},
		change("k4", datastore.U32, "p"),
	}
	if got := drain(t, s3, "agent"); !cmp.Equal(got, want) {
		t.Errorf("after restart:\n%s", cmp.Diff(want, got))
	}
}

// TestSubscriberRestartInitial: Initial reports not yet checked survive a
// restart too.
func TestSubscriberRestartInitial(t *testing.T) {
	path := newBase(t)
	s, _, closeAll := open(t, path, diffdisk.Options{})
	must(t, s.PublishU32("a", 1, "p", 0))
	must(t, s.PublishU32("b", 1, "p", 0))
	must(t, s.Subscribe("w", ".*", nil, datastore.Initial))
	if c, ok, err := s.Check("w"); err != nil || !ok || c.Key != "a" {
		t.Fatalf("first check = %+v, %v, %v", c, ok, err)
	}
	closeAll()
	s = mustOpen(t, path)
	if got := drain(t, s, "w"); !cmp.Equal(got, []datastore.Change{change("b", datastore.U32, "p")}) {
		t.Errorf("after restart: %v", got)
	}
}

// TestSubscriptionsInDiffLayer: a subscriber on a diff layer is told of
// entries of the chain (Initial) and of changes in the top.
func TestSubscriptionsInDiffLayer(t *testing.T) {
	base := newBase(t)
	{
		s, _, closeAll := open(t, base, diffdisk.Options{})
		must(t, s.PublishString("cfg", "v1", "p", 0))
		must(t, s.Subscribe("w", ".*", nil, 0))
		closeAll()
	}
	s := mustOpen(t, newDiff(t, base, "diff.hib"))
	_, _, err := s.Check("w")
	wantErr(t, "subscription of the layer below", err, datastore.ErrNotFound)
	must(t, s.Subscribe("w", ".*", nil, datastore.Initial))
	must(t, s.Delete("cfg", datastore.String, "p"))
	want := []datastore.Change{{Key: "cfg", Type: datastore.String, Owner: "p", Deleted: true}}
	if got := drain(t, s, "w"); !cmp.Equal(got, want) {
		t.Errorf("changes:\n%s", cmp.Diff(want, got))
	}
}

// TestWaitSeesOtherConnection: a Store's Wait returns when another
// connection (here a read-only open of the layer, as another process
// would have) sees a commit. A second writer is refused by the layer lock.
func TestWaitSeesOtherConnection(t *testing.T) {
	path := newBase(t)
	pub := mustOpen(t, path)
	if _, err := diffdisk.Open(path, diffdisk.Options{}); !errors.Is(err, lock.ErrInUse) {
		t.Fatalf("second writable open: %v, want lock.ErrInUse", err)
	}
	sub, _, _ := open(t, path, diffdisk.Options{ReadOnly: true})
	for i := range 3 {
		v, err := sub.Version()
		must(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		done := make(chan error, 1)
		go func() { done <- sub.Wait(ctx, v) }()
		must(t, pub.PublishU32("k", uint32(i), "p", datastore.Overwrite))
		must(t, <-done)
		cancel()
		got, err := sub.RetrieveU32("k", "p")
		must(t, err)
		if got != uint32(i) {
			t.Errorf("after Wait the reader sees %d, want %d", got, i)
		}
	}
	v, _ := sub.Version()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sub.Wait(ctx, v); err != context.Canceled {
		t.Errorf("Wait with a cancelled context = %v", err)
	}
}
