package sqlitelayer_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/store"
	"github.com/hibdisk/hibdisk/internal/store/faultfs"
)

var (
	powerLossIterations = flag.Int("powerloss.iterations", 200, "number of simulated power losses in TestPowerLoss")
	powerLossSeed       = flag.Uint64("powerloss.seed", 0, "seed of TestPowerLoss; 0 picks one (the test logs it)")
)

// The power-loss test's layer is small, and its WAL bounds are low
// (checkpoint every few groups, WAL restarted and cut back every few
// more), because every sync reads the synced file back.
const (
	powerLossDiskSize        = 1 << 20
	powerLossMaxWrite        = 32 << 10
	powerLossCheckpointBytes = 128 << 10
)

// TestPowerLoss is TestCrashSafety against power loss instead of kill -9:
// the layer's files sit on a faultfs.FS beneath hibdisk's VFS, which
// loses every write not covered by a completed sync (or some of them, or
// tears one) at a random operation, or fails one write or sync with EIO
// or ENOSPC first. Each iteration opens the layer as the last one's
// power loss left it, runs groups of the crash test's deterministic
// sequence, flushing after each, loses power, and checks that every group
// a completed Flush acknowledged survived, that the group in flight is
// all there or not at all, and that Check passes.
//
// The WAL bounds are lowered so that background checkpoints, the WAL
// restarting from its beginning (writes through the mapping) and its
// truncation happen every few groups. The seed replays the plan of every
// iteration; which operation a fault hits can still vary, since the
// checkpointer runs on its own goroutine.
func TestPowerLoss(t *testing.T) {
	seed := *powerLossSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (replay with -powerloss.seed=%d)", seed, seed)
	defer sqlitelayer.SetWALBoundsForTest(powerLossCheckpointBytes, 4*powerLossCheckpointBytes, 4*powerLossCheckpointBytes)()

	root := t.TempDir()
	dir := filepath.Join(root, "0")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const name = "powerloss.hibdisk"
	f, err := sqlitelayer.Create(filepath.Join(dir, name), sqlitelayer.CreateOptions{Size: powerLossDiskSize, SectorSize: crashSectorSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	model := make([]byte, powerLossDiskSize) // state after `done` groups
	done := 0
	rng := rand.New(rand.NewPCG(seed, 0x706f776572))
	var faults faultfs.Counts
	opsPerGroup := 10.0 // running estimate, to spread losses over an iteration
	surfaced, inFlightCommitted := 0, 0
	for iter := range *powerLossIterations {
		groups := 1 + rng.IntN(8)
		span := int64(float64(groups)*opsPerGroup) + 1
		var plan faultfs.Plan
		switch rng.IntN(4) {
		case 0, 1:
			plan.LosePowerAt = 1 + rng.Int64N(span)
		case 2:
			plan.Fail, plan.FailAt = faultfs.EIO, 1+rng.Int64N(span)
		case 3:
			plan.Fail, plan.FailAt = faultfs.ENOSPC, 1+rng.Int64N(span)
		}
		if plan.FailAt != 0 && rng.IntN(2) == 0 {
			plan.LosePowerAt = plan.FailAt + rng.Int64N(span)
		}
		fs := faultfs.New(rng.Uint64(), plan)
		run := powerLossRun{
			path:       filepath.Join(dir, name),
			seed:       seed,
			start:      done,
			groups:     groups,
			writeBack:  iter%2 == 1,
			cleanClose: rng.IntN(4) == 0,
		}
		restore, err := store.UseBaseVFS(dir, fs)
		if err != nil {
			t.Fatal(err)
		}
		run.run(t, fs)
		next := filepath.Join(root, fmt.Sprint(iter+1))
		if err := os.Mkdir(next, 0o755); err != nil {
			t.Fatal(err)
		}
		err = fs.CrashClone(next)
		restore()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		dir = next
		c := fs.Counts()
		faults.Add(c)
		if c.EIO+c.ENOSPC > 0 && run.flushErr != nil {
			surfaced++
		}
		if !run.lostDuringRun && run.ran > 0 {
			opsPerGroup = 0.8*opsPerGroup + 0.2*float64(c.Ops)/float64(run.ran)
		}

		for ; done < run.acked; done++ {
			applyCrashGroup(model, crashGroupOn(seed, done, powerLossDiskSize, powerLossMaxWrite))
		}
		path := filepath.Join(dir, name)
		got, err := readPowerLossLayer(path)
		if err != nil {
			t.Fatalf("iteration %d (seed %d, plan %+v, write-back %v, %+v): %v", iter, seed, plan, run.writeBack, c, err)
		}
		switch {
		case bytes.Equal(got, model):
		case run.inFlight && bytes.Equal(got, powerLossNext(model, seed, done)):
			model = powerLossNext(model, seed, done)
			done++
			inFlightCommitted++
		default:
			t.Fatalf("iteration %d (seed %d, plan %+v, write-back %v, %+v): after %d acknowledged groups the layer holds neither that state nor the next one (first difference at byte %d)",
				iter, seed, plan, run.writeBack, c, done, firstDifference(got, model))
		}
		r, err := sqlitelayer.Check(path)
		if err != nil {
			t.Fatalf("iteration %d (seed %d): %v", iter, seed, err)
		}
		if !r.OK() {
			t.Fatalf("iteration %d (seed %d, plan %+v): Check after power loss:\n%s", iter, seed, plan, r)
		}
		if rng.IntN(3) == 0 {
			// Fold the WAL in and delete it, so that the next
			// iteration creates it anew.
			f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	db, wal := faults.Files[name], faults.Files[name+"-wal"]
	t.Logf("%d iterations, %d groups acknowledged and verified (%d in-flight groups found committed); faults injected: %d power losses, %d torn writes, %d torn pages, %d dirty pages dropped, %d file creations or deletions undone, %d EIO, %d ENOSPC (%d surfaced as a failed Flush); %d operations, %d database syncs (%d checkpoints), %d WAL syncs (%d after the WAL restarted), %d WAL truncations",
		*powerLossIterations, done, inFlightCommitted, faults.PowerLosses, faults.TornWrites, faults.TornPages, faults.DroppedPage, faults.Vanished, faults.EIO, faults.ENOSPC, surfaced, faults.Ops,
		db.Syncs, db.Overwrites, wal.Syncs, wal.Overwrites, wal.Truncates)
	if done == 0 {
		t.Error("no group was ever acknowledged")
	}
}

func powerLossNext(model []byte, seed uint64, g int) []byte {
	next := bytes.Clone(model)
	applyCrashGroup(next, crashGroupOn(seed, g, powerLossDiskSize, powerLossMaxWrite))
	return next
}

// powerLossRun is one iteration's writing: groups start, start+1, ...
// through a layer opened on the fault FS, until the plan stops it.
type powerLossRun struct {
	path       string
	seed       uint64
	start      int
	groups     int
	writeBack  bool
	cleanClose bool // close the layer before the power loss

	acked         int   // groups acknowledged in total
	ran           int   // groups this run started
	inFlight      bool  // group acked was started and not acknowledged
	flushErr      error // the first Flush error
	lostDuringRun bool  // power was lost before the run ended
}

func (r *powerLossRun) run(t *testing.T, fs *faultfs.FS) {
	t.Helper()
	r.acked = r.start
	f, err := sqlitelayer.Open(r.path, sqlitelayer.OpenOptions{WriteBack: r.writeBack})
	if err != nil {
		if !fs.PowerLost() && fs.Counts().EIO+fs.Counts().ENOSPC == 0 {
			t.Fatalf("open with no fault injected: %v", err)
		}
		r.lostDuringRun = fs.PowerLost()
		return
	}
	failed := false
	for g := r.start; g < r.start+r.groups && !failed; g++ {
		r.ran++
		r.inFlight = true
		for _, op := range crashGroupOn(r.seed, g, powerLossDiskSize, powerLossMaxWrite) {
			if op.zero {
				err = f.Zero(op.off, int64(len(op.data)))
			} else {
				_, err = f.WriteAt(op.data, op.off)
			}
			if err != nil {
				failed = true
				break
			}
		}
		if failed {
			break
		}
		if err := f.Flush(); err != nil {
			r.flushErr = err
			if errors.Is(err, disklayer.ErrNoSpace) {
				// Lack of space loses only the batch, and this Flush
				// reported it: the group's sectors must not read back
				// as anything (ErrWriteLost), since they were lost.
				op := crashGroupOn(r.seed, g, powerLossDiskSize, powerLossMaxWrite)[0]
				if _, err := f.ReadAt(make([]byte, len(op.data)), op.off); !errors.Is(err, disklayer.ErrWriteLost) {
					t.Errorf("a read of a sector lost to a full disk: %v, want ErrWriteLost (%v)", err, r.flushErr)
				}
				break
			}
			// Any other failure is sticky: nothing after it may claim
			// success.
			if err := f.Flush(); err == nil {
				t.Errorf("a Flush succeeded after a failed one (%v)", r.flushErr)
			}
			if _, err := f.WriteAt(make([]byte, crashSectorSize), 0); err == nil && !r.writeBack {
				t.Errorf("a write succeeded after a failed Flush (%v)", r.flushErr)
			}
			break
		}
		r.acked, r.inFlight = g+1, false
	}
	if failed && !fs.PowerLost() && fs.Counts().EIO+fs.Counts().ENOSPC == 0 {
		t.Fatalf("write failed with no fault injected: %v", err)
	}
	if r.flushErr != nil && !fs.PowerLost() && fs.Counts().EIO+fs.Counts().ENOSPC == 0 {
		t.Fatalf("flush failed with no fault injected: %v", r.flushErr)
	}
	r.lostDuringRun = fs.PowerLost()
	if r.cleanClose && !failed && r.flushErr == nil {
		if err := f.Close(); err != nil && !fs.PowerLost() && !errors.Is(err, faultfs.ErrPowerLost) && fs.Counts().EIO+fs.Counts().ENOSPC == 0 {
			t.Fatalf("close with no fault injected: %v", err)
		}
		fs.LosePower()
		return
	}
	// The loss comes first: closing would commit what a failed group
	// left in the batch.
	fs.LosePower()
	f.Close()
}

func readPowerLossLayer(path string) ([]byte, error) {
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open after power loss: %w", err)
	}
	defer f.Close()
	p := make([]byte, f.Size())
	if _, err := f.ReadAt(p, 0); err != nil {
		return nil, fmt.Errorf("read after power loss: %w", err)
	}
	return p, nil
}
