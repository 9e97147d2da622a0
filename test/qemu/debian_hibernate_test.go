package qemu_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const mib = 1 << 20

// testHibernate boots hibdisk-ticker.target on tick.db, hibernates it
// while it ticks, resumes it on r1.db (the counter goes on at the next
// tick, no reboot) and hibernates again, stacked.
func (r *debianRun) testHibernate(t *testing.T) {
	hibdisk(t, "create", "-b", r.g.golden, r.path("tick.db"))
	started := time.Now()
	run := startDebian(t, r.g, r.dir, "tick.db", tickerTarget)
	first := waitTick(t, run, 1)
	r.measured(t, "boot to first tick (2 guests booting)", "%.1f s", time.Since(started).Seconds())
	waitTick(t, run, first.n+5)
	<-r.workDone
	h := vmHibernate(t, r.dir, "tick.db")
	waitVMExit(t, run, time.Minute)
	r.measured(t, "first hibernate", "%.2f s, %.1f MiB of %d MiB RAM stored",
		h.Hibernate.TotalSeconds, float64(h.Hibernate.RAMBytesStored)/mib, h.Hibernate.RAMBytes/mib)
	r.last, _ = lastTick(run.Lines())
	if !linuxBooted(run.Lines()) {
		t.Fatalf("vm run's console shows no kernel banner: the no-reboot checks would prove nothing\n%s", tail(run.Lines(), 20))
	}

	res, next := r.resume(t, "r1.db")
	t.Logf("guest clock between the last tick before and the first after: %.2f s", next.at-r.last.at)
	waitTick(t, res, next.n+3)
	h = vmHibernate(t, r.dir, "r1.db")
	waitVMExit(t, res, time.Minute)
	r.measured(t, "stacked hibernate", "%.2f s, %.2f MiB stored",
		h.Hibernate.TotalSeconds, float64(h.Hibernate.RAMBytesStored)/mib)
	if linuxBooted(res.Lines()) {
		t.Errorf("the resumed machine booted again:\n%s", tail(res.Lines(), 40))
	}
	checkLayerCLI(t, r.path("tick.db"))
	checkLayerCLI(t, r.path("r1.db"))

	r.r1Last, _ = lastTick(res.Lines())

	// Each tick is fsynced before it is printed, so the snapshot holds
	// every tick the console showed, and perhaps the next.
	r.snap = replay(t, r.path("tick.db"))
	r.ticks = parseTicks(t, "tick.db (replayed) "+ticksPath, debugfsCat(t, r.snap.path, ticksPath))
	if n := int64(len(r.ticks)); n != r.last.n && n != r.last.n+1 {
		t.Errorf("the snapshot's %s holds %d ticks; the console showed %d before the hibernate", ticksPath, n, r.last.n)
	}
}

// resume starts `vm resume --top TOP tick.db` and returns it with its
// first tick, which must be the next one (or the one after, if the guest
// had begun it when it was stopped).
func (r *debianRun) resume(t *testing.T, top string) (*vmProcess, tick) {
	t.Helper()
	started := time.Now()
	p := startVM(t, r.dir, "vm", "resume", "--top", top, "tick.db")
	next := waitTick(t, p, 0)
	r.measured(t, "resume to first tick ("+top+")", "%.2f s", time.Since(started).Seconds())
	if next.n != r.last.n+1 && next.n != r.last.n+2 {
		t.Errorf("%s: first tick after resume is %d; the last before the hibernate was %d", top, next.n, r.last.n)
	}
	return p, next
}

// testDiff compares golden, the powered-off job and the hibernated
// snapshots offline, file by file. The snapshots' filesystems were
// mounted: their newest metadata is in the ext4 journal, so their files
// are compared on e2fsck's replay of a raw copy, and hibdisk's own view
// of the layer (which replays the journal in memory) is held to that.
func (r *debianRun) testDiff(t *testing.T) {
	golden, job := r.g.golden, r.path("job.db")

	// golden → snapshot: systemd's boot files and the ticker's files.
	rep := diffFiles(t, golden, r.snap.path)
	wantAdded := sortedUnion(systemdBootAdded, tickerFiles)
	r.checkPaths(t, "golden → tick.db", rep, wantAdded, nil, systemdBootChanged)

	// job → snapshot: the work unit's files gone, the ticker's there,
	// and only systemd's boot files otherwise differ.
	added, removed, changed := diffFiles(t, job, r.snap.path).paths()
	if d := cmp.Diff(sortedUnion(tickerFiles), added); d != "" {
		t.Errorf("job → tick.db: added (-want +got):\n%s", d)
	}
	if d := cmp.Diff(sortedUnion(workFiles), removed); d != "" {
		t.Errorf("job → tick.db: removed (-want +got):\n%s", d)
	}
	systemd := map[string]bool{}
	for _, p := range sortedUnion(systemdBootAdded, systemdBootChanged) {
		systemd[p] = true
	}
	for _, p := range changed {
		if !systemd[p] {
			t.Errorf("job → tick.db: %s changed; only systemd's boot files may", p)
		}
	}

	// snapshot → its stacked successor: the ticks file went on.
	r.checkTicksGoOn(t, "r1.db", replay(t, r.path("r1.db")), r.r1Last.n)

	// The layers themselves.
	r.checkDirect(t, golden, rep)
}

func (r *debianRun) checkPaths(t *testing.T, what string, rep fileDiff, added, removed, changed []string) {
	t.Helper()
	a, rm, c := rep.paths()
	if d := cmp.Diff(added, a); d != "" {
		t.Errorf("%s: added (-want +got):\n%s", what, d)
	}
	if d := cmp.Diff(removed, rm); d != "" {
		t.Errorf("%s: removed (-want +got):\n%s", what, d)
	}
	if d := cmp.Diff(changed, c); d != "" {
		t.Errorf("%s: changed (-want +got):\n%s", what, d)
	}
}

// checkTicksGoOn: a layer resumed from the snapshot has the snapshot's
// ticks, unchanged, and after them at least up to the last tick its
// console showed.
func (r *debianRun) checkTicksGoOn(t *testing.T, name string, img replayedImage, printed int64) []tick {
	t.Helper()
	ticks := parseTicks(t, name+" (replayed) "+ticksPath, debugfsCat(t, img.path, ticksPath))
	if int64(len(ticks)) < printed || len(ticks) <= len(r.ticks) {
		t.Errorf("%s: %d ticks on disk; its console showed %d, the snapshot it resumed had %d", name, len(ticks), printed, len(r.ticks))
		return ticks
	}
	if d := cmp.Diff(r.ticks, ticks[:len(r.ticks)], cmp.AllowUnexported(tick{})); d != "" {
		t.Errorf("%s: the snapshot's ticks changed (-snapshot +%s):\n%s", name, name, d)
	}
	return ticks
}

// checkDirect inspects the hibernated layer tick.db itself: its disk and
// RAM differ from golden, and its files are e2fsck's replay of it.
func (r *debianRun) checkDirect(t *testing.T, golden string, replayed fileDiff) {
	snap := r.path("tick.db")
	rep := diffFiles(t, golden, snap)
	if rep.Disk.ChangedBytes == 0 || rep.Hibernate == nil || rep.Hibernate.ChangedBytes == 0 {
		t.Errorf("diff golden tick.db: disk %d bytes changed, hibernate %+v; want both", rep.Disk.ChangedBytes, rep.Hibernate)
	}
	if gap := sameFiles(rep, replayed); gap != "" {
		t.Errorf("hibdisk diff golden tick.db does not name the files e2fsck's replay does (journal needed recovery: %v): %s", r.snap.neededRecovery, gap)
	}
	want := debugfsCat(t, r.snap.path, ticksPath)
	got, stderr, err := hibdiskTry(t, "cat", snap, ticksPath)
	switch {
	case err != nil:
		t.Errorf("hibdisk cat tick.db %s (journal needed recovery: %v): %v: %s", ticksPath, r.snap.neededRecovery, err, stderr)
	case got != want:
		t.Errorf("hibdisk cat tick.db %s:\n%s", ticksPath, cmp.Diff(want, got))
	}
}

// testBranches resumes the snapshot twice at once: both machines go on
// ticking from where it stopped, each on its own layer, and the layers
// diverge; the snapshot does not change.
func (r *debianRun) testBranches(t *testing.T) {
	snap := r.path("tick.db")
	before := fileSHA(t, snap)
	tops := []string{"rA.db", "rB.db"}
	procs := make([]*vmProcess, len(tops))
	started := time.Now()
	for i, top := range tops {
		procs[i] = startVM(t, r.dir, "vm", "resume", "--top", top, "tick.db")
	}
	firsts, after := waitFirstTicks(t, procs)
	for i, first := range firsts {
		r.measured(t, "two resumes at once, to first tick ("+tops[i]+")", "%.2f s", after[i].Sub(started).Seconds())
		if first.n != r.last.n+1 && first.n != r.last.n+2 {
			t.Errorf("%s: first tick after resume is %d; the last before the hibernate was %d", tops[i], first.n, r.last.n)
		}
	}
	for _, p := range procs {
		waitTick(t, p, r.last.n+5)
	}
	printed := make([]int64, len(procs))
	for i, p := range procs {
		h := vmHibernate(t, r.dir, tops[i])
		waitVMExit(t, p, time.Minute)
		last, _ := lastTick(p.Lines())
		printed[i] = last.n
		r.measured(t, "hibernate of a branch ("+tops[i]+")", "%.2f s, %.2f MiB stored",
			h.Hibernate.TotalSeconds, float64(h.Hibernate.RAMBytesStored)/mib)
		if linuxBooted(p.Lines()) {
			t.Errorf("%s: the resumed machine booted again", tops[i])
		}
	}
	if fileSHA(t, snap) != before {
		t.Errorf("resuming tick.db twice changed it")
	}
	r.checkDiverged(t, tops, printed)
	for _, layer := range append([]string{"tick.db"}, tops...) {
		checkLayerCLI(t, r.path(layer))
	}
}

// checkDiverged: the two branches' layers differ in disk and RAM, and
// their ticks files share the snapshot's ticks and go on differently.
func (r *debianRun) checkDiverged(t *testing.T, tops []string, printed []int64) {
	rep := diffFiles(t, r.path(tops[0]), r.path(tops[1]))
	if rep.Disk.ChangedBytes == 0 || rep.Hibernate == nil || rep.Hibernate.ChangedBytes == 0 {
		t.Errorf("diff %s %s: disk %d bytes changed, hibernate %+v; want both", tops[0], tops[1], rep.Disk.ChangedBytes, rep.Hibernate)
	}
	var ticks [][]tick
	for i, top := range tops {
		ticks = append(ticks, r.checkTicksGoOn(t, top, replay(t, r.path(top)), printed[i]))
	}
	// Ticks up to r.last were in the snapshot (on disk or in its page
	// cache); those after it were written by each branch at its own time.
	n := int(r.last.n)
	for i, tk := range ticks {
		if len(tk) <= n {
			t.Fatalf("%s holds %d ticks on disk, want more than the %d before the snapshot", tops[i], len(tk), n)
		}
	}
	if ticks[0][n] == ticks[1][n] {
		t.Errorf("%s and %s wrote the same tick %d after the snapshot: %+v", tops[0], tops[1], n+1, ticks[0][n])
	}
}

// sameFiles says how hibdisk's file diff differs from e2fsck's replay
// ("" when it does not).
func sameFiles(got, replayed fileDiff) string {
	if len(got.Skipped) > 0 {
		return fmt.Sprintf("not compared: %q", got.Skipped)
	}
	a, rm, c := got.paths()
	wa, wrm, wc := replayed.paths()
	if cmp.Equal(a, wa) && cmp.Equal(rm, wrm) && cmp.Equal(c, wc) {
		return ""
	}
	return fmt.Sprintf("hibdisk sees %d added, %d removed, %d changed paths (%q …); after e2fsck's replay %d, %d, %d",
		len(a), len(rm), len(c), firstN(a, 3), len(wa), len(wrm), len(wc))
}

func firstN(s []string, n int) []string { return s[:min(n, len(s))] }

// waitFirstTicks waits for the first tick of every process and says
// when each was seen.
func waitFirstTicks(t *testing.T, procs []*vmProcess) ([]tick, []time.Time) {
	t.Helper()
	ticks, seen := make([]tick, len(procs)), make([]time.Time, len(procs))
	for deadline := time.Now().Add(guestTimeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		missing := 0
		for i, p := range procs {
			if !seen[i].IsZero() {
				continue
			}
			if tk, ok := firstTick(p.Lines()); ok {
				ticks[i], seen[i] = tk, time.Now()
			} else {
				missing++
			}
		}
		if missing == 0 {
			return ticks, seen
		}
	}
	for i, p := range procs {
		if seen[i].IsZero() {
			t.Fatalf("machine %d: no tick within %v\nconsole tail:\n%s\nstderr:\n%s", i, guestTimeout, tail(p.Lines(), 30), p.stderr.String())
		}
	}
	return ticks, seen
}

func firstTick(lines []string) (tick, bool) {
	for _, l := range lines {
		if tk, ok := parseTick(l); ok {
			return tk, true
		}
	}
	return tick{}, false
}
