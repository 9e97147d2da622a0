package sqlitelayer_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// fileSize is the size of the file at path (0 if it does not exist).
func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// writeMiB writes n MiB of data derived from seed at off, 1 MiB at a
// time.
func writeMiB(t testing.TB, d disklayer.Disk, off int64, n int, seed byte) {
	t.Helper()
	for i := range n {
		mustWrite(t, d, fill(1<<20, seed+byte(i)), off+int64(i)<<20)
	}
}

// checkMiB checks what writeMiB(off, n, seed) wrote.
func checkMiB(t testing.TB, l disklayer.Layer, off int64, n int, seed byte) {
	t.Helper()
	for i := range n {
		if got := mustRead(t, l, off+int64(i)<<20, 1<<20); !bytes.Equal(got, fill(1<<20, seed+byte(i))) {
			t.Fatalf("MiB %d at %d: content differs from what was written", i, off)
		}
	}
}

// requireReclaims fails the test at once if f does not give space back
// while open.
func requireReclaims(t testing.TB, f *sqlitelayer.File) {
	t.Helper()
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Reclaims {
		t.Fatal("Stats.Reclaims is false for a new layer")
	}
}

// awaitReclaim waits for a round of the layer's reclaimer that gave pages
// back. The deadline only keeps a broken build from hanging; nothing here
// depends on how fast a round is.
func awaitReclaim(t testing.TB, rounds <-chan sqlitelayer.ReclaimRound) {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case r := <-rounds:
			if r.Err != nil {
				t.Fatalf("reclaim: %v", r.Err)
			}
			if r.Pages > 0 {
				return
			}
		case <-deadline:
			t.Fatal("no reclaim gave pages back within 2 minutes")
		}
	}
}

// TestReclaimWhileOpen: 64 MiB written and then TRIMmed on a layer that
// stays open (a served layer) goes back to the filesystem while reads
// and writes go on, and the data around it is intact: in a base layer
// (TRIM deletes the rows) and in a diff layer (it makes them
// tombstones). Without live reclaim the file keeps its ~75 MiB until the
// layer is compacted.
//
// Both ways of giving the space back run: in chunks, and at once (a free
// list longer than reclaimFullPages; 64 MiB is just above it), which
// starts in a pause between bursts of requests.
func TestReclaimWhileOpen(t *testing.T) {
	for _, diff := range []bool{false, true} {
		for _, full := range []bool{false, true} {
			name := map[bool]string{false: "base", true: "diff"}[diff] + "/" + map[bool]string{false: "chunks", true: "full"}[full]
			t.Run(name, func(t *testing.T) {
				defer sqlitelayer.SetReclaimFullForTest(map[bool]int64{false: 1 << 40, true: 0}[full])()
				testReclaimWhileOpen(t, diff, full)
			})
		}
	}
}

func testReclaimWhileOpen(t *testing.T, diff, full bool) {
	path := newLayerPath(t, "trim.hibdisk")
	opts := sqlitelayer.CreateOptions{Size: 256 << 20}
	if diff {
		opts.Parent = rawParent(t, filepath.Dir(path), opts.Size)
	}
	f := createLayer(t, path, opts)
	// Data kept before and after the data TRIMmed, so that the reclaim
	// must move the pages at the file's end into the freed ones.
	writeMiB(t, f, 200<<20, 1, 1)
	writeMiB(t, f, 0, 16, 10)
	writeMiB(t, f, 210<<20, 1, 2)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	requireReclaims(t, f)
	rounds := sqlitelayer.WatchReclaimForTest(f)
	if err := f.Zero(0, 16<<20); err != nil {
		t.Fatal(err)
	}
	// Requests go on while the reclaimer runs: reads of what is kept and
	// of new writes, which the reclaim may move under them.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			want := fill(4096, byte(i))
			off := int64(220<<20) + int64(i%256)*4096
			if _, err := f.WriteAt(want, off); err != nil {
				errs <- err
				return
			}
			got := make([]byte, 4096)
			if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
				errs <- err
				return
			}
			if i%64 == 0 {
				if err := f.Flush(); err != nil {
					errs <- err
					return
				}
			}
			if full && i%256 == 255 {
				// A full reclaim waits for a pause in the commits
				// (reclaimFullQuiet, here reclaimQuiet): requests come
				// in bursts, with pauses long enough for a try and its
				// first back-off (0.5 s, then 1 s).
				time.Sleep(3 * time.Second)
			}
		}
	}()
	if err := f.Flush(); err != nil { // the commit that frees 16 MiB
		t.Fatal(err)
	}
	awaitReclaim(t, rounds)
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("request during the reclaim: %v", err)
	default:
	}
	checkMiB(t, f, 200<<20, 1, 1)
	checkMiB(t, f, 210<<20, 1, 2)
	if got := mustRead(t, f, 0, 16<<20); !bytes.Equal(got, make([]byte, 16<<20)) {
		t.Fatal("the TRIMmed range does not read as zeros")
	}
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Live data: 3 MiB at most; the file held ~21 MiB before.
	if size := fileSize(t, path); size > 8<<20 {
		t.Errorf("database file is %d bytes after the reclaim (free: %d bytes), want < 8 MiB", size, st.FreeBytes)
	}
	if mode, err := sqlitelayer.AutoVacuumForTest(f); err != nil || mode != 2 {
		t.Errorf("auto_vacuum after the reclaim: %d, %v; want 2 (INCREMENTAL)", mode, err)
	}
}

// writeToFree writes 64 MiB at 0 and 1 MiB (seed 3) at 100 MiB into f
// and flushes; freeWritten then zeroes the 64 MiB and flushes, a commit
// that leaves 64 MiB free (a reclaim in one transaction with the default
// reclaimFullPages), and returns the reclaimer's rounds, watched from
// before the zeros.
func writeToFree(t *testing.T, f *sqlitelayer.File) {
	t.Helper()
	writeMiB(t, f, 0, 64, 10)
	writeMiB(t, f, 100<<20, 1, 3)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
}

func freeWritten(t *testing.T, f *sqlitelayer.File) <-chan sqlitelayer.ReclaimRound {
	t.Helper()
	requireReclaims(t, f)
	rounds := sqlitelayer.WatchReclaimForTest(f)
	if err := f.Zero(0, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	return rounds
}

// TestReclaimCutsWAL: after a reclaim with nothing committed since, the
// WAL file is cut too, so the layer's files hold little more than its
// data while it stays open.
func TestReclaimCutsWAL(t *testing.T) {
	path := newLayerPath(t, "wal.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 128 << 20})
	writeToFree(t, f)
	before := fileSize(t, path) + fileSize(t, path+"-wal")
	rounds := freeWritten(t, f)
	awaitReclaim(t, rounds)
	after := fileSize(t, path) + fileSize(t, path+"-wal")
	t.Logf("database and WAL: %d -> %d bytes", before, after)
	if after > 4<<20 {
		t.Errorf("database %d + WAL %d bytes after the reclaim, want < 4 MiB", fileSize(t, path), fileSize(t, path+"-wal"))
	}
	checkMiB(t, f, 100<<20, 1, 3)
}

// TestReclaimOnClose: a command that frees space and exits at once (a
// shrink, a dropped hibernate snapshot) leaves a small file: Close
// finishes the reclaim.
func TestReclaimOnClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		fill func(t *testing.T, f *sqlitelayer.File) // writes 64 MiB that free drops
		free func(t *testing.T, f *sqlitelayer.File)
	}{
		{"resize", func(t *testing.T, f *sqlitelayer.File) {
			writeMiB(t, f, 64<<20, 64, 30)
		}, func(t *testing.T, f *sqlitelayer.File) {
			if err := f.Resize(32 << 20); err != nil {
				t.Fatal(err)
			}
		}},
		{"hibernate-snapshot", func(t *testing.T, f *sqlitelayer.File) {
			writeMiB(t, f.Hibernate(), 0, 64, 20)
		}, func(t *testing.T, f *sqlitelayer.File) {
			// What dropping a machine snapshot does: its metadata and
			// its hibernate blocks go in one transaction.
			err := f.Update("drop snapshot", func(tx *sqlitelayer.Tx) error {
				if err := tx.Conn().Exec("DELETE FROM hibernate_snapshot"); err != nil {
					return err
				}
				return tx.ForgetHibernate(0, 64<<20)
			})
			if err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := newLayerPath(t, "close.hibdisk")
			f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 128 << 20})
			if err != nil {
				t.Fatal(err)
			}
			writeMiB(t, f, 0, 1, 4)
			tc.fill(t, f)
			writeMiB(t, f, 16<<20, 1, 5)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			full := fileSize(t, path)
			if f, err = sqlitelayer.Open(path, sqlitelayer.OpenOptions{}); err != nil {
				t.Fatal(err)
			}
			tc.free(t, f)
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			size := fileSize(t, path)
			t.Logf("file: %d -> %d bytes", full, size)
			// 2 MiB of data left; the file held ~75 MiB.
			if size > 4<<20 {
				t.Errorf("file is %d bytes after freeing all but 2 MiB of data, want < 4 MiB", size)
			}
			f, err = sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			checkMiB(t, f, 0, 1, 4)
			checkMiB(t, f, 16<<20, 1, 5)
		})
	}
}

// TestCompactConvertsOldLayer: a layer made before live reclaim
// (auto_vacuum=NONE) keeps its free pages while open; Compact gives them
// back and converts it, after which it reclaims by itself.
func TestCompactConvertsOldLayer(t *testing.T) {
	path := newLayerPath(t, "old.hibdisk")
	restore := sqlitelayer.SetIncrementalForTest(false)
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 128 << 20})
	restore()
	if err != nil {
		t.Fatal(err)
	}
	writeMiB(t, f, 0, 32, 10)
	writeMiB(t, f, 64<<20, 1, 6)
	if err := f.Zero(0, 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if size := fileSize(t, path); size < 32<<20 {
		t.Fatalf("an old layer's file is %d bytes after its 32 MiB were TRIMmed and it closed: it gave space back by itself", size)
	}
	f, err = sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, err := f.Stats(); err != nil || st.Reclaims || st.FreeBytes < 32<<20 {
		t.Fatalf("old layer: Stats %+v, %v; want Reclaims false and >= 32 MiB free", st, err)
	}
	if err := f.Compact(); err != nil {
		t.Fatal(err)
	}
	st, err := f.Stats()
	if err != nil || !st.Reclaims || st.FreeBytes != 0 {
		t.Fatalf("after Compact: Stats %+v, %v; want Reclaims and nothing free", st, err)
	}
	if size := fileSize(t, path); size > 4<<20 {
		t.Errorf("file is %d bytes after Compact, want < 4 MiB", size)
	}
	// Now it gives space back while open.
	rounds := sqlitelayer.WatchReclaimForTest(f)
	writeMiB(t, f, 0, 32, 40)
	if err := f.Zero(0, 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	awaitReclaim(t, rounds)
	if size := fileSize(t, path); size > 4<<20 {
		t.Errorf("file is %d bytes after a reclaim, want < 4 MiB", size)
	}
	checkMiB(t, f, 64<<20, 1, 6)
}

// TestScratchLayerDoesNotReclaim: convert's output (a Scratch layer) is
// made without live reclaim, and Compact converts it.
func TestScratchLayerDoesNotReclaim(t *testing.T) {
	path := newLayerPath(t, "scratch.hibdisk")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 16 << 20, Scratch: true})
	if err != nil {
		t.Fatal(err)
	}
	writeMiB(t, f, 0, 1, 7)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f, err = sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, err := f.Stats(); err != nil || st.Reclaims {
		t.Fatalf("Scratch layer: Stats %+v, %v; want Reclaims false", st, err)
	}
	if err := f.Compact(); err != nil {
		t.Fatal(err)
	}
	if st, err := f.Stats(); err != nil || !st.Reclaims {
		t.Fatalf("after Compact: Stats %+v, %v; want Reclaims", st, err)
	}
	checkMiB(t, f, 0, 1, 7)
}

// Environment of the child of TestCrashDuringReclaim.
const (
	reclaimChildEnv = "HIBDISK_RECLAIM_CHILD" // layer path; set only in the child
	reclaimStartEnv = "HIBDISK_RECLAIM_START" // first round to run
)

// The child's ranges: a 4 MiB range written and discarded every round,
// and after it one slot a round, written once and kept.
const (
	reclaimRangeOff = 8 << 20
	reclaimRangeLen = 4 << 20
	reclaimSlotsOff = 12 << 20
	reclaimSlotLen  = 16 << 10
	reclaimSlots    = (24<<20 - reclaimSlotsOff) / reclaimSlotLen
)

// TestCrashDuringReclaim kills a process while it gives free space back.
// Each round the child writes its 4 MiB range and then the round's slot
// (new rows, so their pages follow the range's in the file), flushes,
// discards the range, flushes, says so, and reclaims at once, moving the
// slots' pages into the range's; the kill lands at a random moment after
// a discard was acknowledged. A reclaim's chunks change no content and
// never commit a batch before its Flush, so after every kill the data
// written before the child is intact, every acknowledged slot holds its
// data, the range and the next slot hold what the next round may have
// committed (nothing, its write, or its write and discard), and Check
// passes.
func TestCrashDuringReclaim(t *testing.T) {
	if path := os.Getenv(reclaimChildEnv); path != "" {
		reclaimChild(t, path)
		return
	}
	if testing.Short() {
		t.Skip("kills child processes; skipped in -short mode")
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	path := newLayerPath(t, "reclaim-crash.hibdisk")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	writeMiB(t, f, 0, 2, 50)
	writeMiB(t, f, 24<<20, 2, 60)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	next := 0 // the first round not acknowledged
	for iter := range 10 {
		acked := runReclaimChild(t, path, next, time.Duration(rng.IntN(300))*time.Millisecond)
		next = acked + 1
		f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("iteration %d: open after kill -9: %v", iter, err)
		}
		checkMiB(t, f, 0, 2, 50)
		checkMiB(t, f, 24<<20, 2, 60)
		for g := range acked + 1 {
			if got := mustRead(t, f, reclaimSlotsOff+int64(g)*reclaimSlotLen, reclaimSlotLen); !bytes.Equal(got, reclaimChildData(g, reclaimSlotLen)) {
				t.Fatalf("iteration %d: slot %d, acknowledged, does not hold its data", iter, g)
			}
		}
		rangeData := mustRead(t, f, reclaimRangeOff, reclaimRangeLen)
		slot := mustRead(t, f, reclaimSlotsOff+int64(next)*reclaimSlotLen, reclaimSlotLen)
		// Round next (unacknowledged) may have committed nothing, its
		// write, or its write and its discard (killed before it said so).
		wrote := bytes.Equal(slot, reclaimChildData(next, reclaimSlotLen))
		switch {
		case isZero(rangeData) && isZero(slot):
		case wrote && bytes.Equal(rangeData, reclaimChildData(next, reclaimRangeLen)):
		case wrote && isZero(rangeData):
		default:
			t.Fatalf("iteration %d: after round %d was acknowledged, the range holds %s and slot %d %s",
				iter, acked, reclaimDescribe(rangeData, next), next, reclaimDescribe(slot, next))
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := sqlitelayer.Check(path)
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK() {
			t.Fatalf("iteration %d: Check after kill -9:\n%s", iter, r)
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("10 kills, %d rounds acknowledged; file %d bytes", next, st.Size())
}

func isZero(p []byte) bool { return bytes.Equal(p, make([]byte, len(p))) }

// reclaimDescribe says what p, the range or a slot, holds.
func reclaimDescribe(p []byte, g int) string {
	switch {
	case isZero(p):
		return "nothing"
	case bytes.Equal(p, reclaimChildData(g, len(p))):
		return fmt.Sprintf("round %d's write", g)
	}
	return "other data"
}

// reclaimChildData is what the child writes in round g: n bytes.
func reclaimChildData(g, n int) []byte {
	p := make([]byte, n)
	for i := 0; i < n; i += 4096 {
		copy(p[i:], fill(4096, byte(g)+byte(g>>8)*31+byte(i>>12)))
	}
	return p
}

// runReclaimChild starts the child at round start, kills it delay after
// its first acknowledged round, and returns the last round it
// acknowledged.
func runReclaimChild(t *testing.T, path string, start int, delay time.Duration) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashDuringReclaim$", "-test.count=1")
	cmd.Env = append(os.Environ(), reclaimChildEnv+"="+path, reclaimStartEnv+"="+strconv.Itoa(start))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := start - 1
	var killAt <-chan time.Time
	killed := false
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				cmd.Wait()
				if !killed {
					t.Fatalf("child ended on its own:\n%s", stderr.String())
				}
				return acked
			}
			if n, ok := strings.CutPrefix(line, "discarded "); ok {
				g, err := strconv.Atoi(n)
				if err != nil || g != acked+1 {
					t.Fatalf("child said %q after round %d", line, acked)
				}
				acked = g
				if killAt == nil && !killed {
					killAt = time.After(delay)
				}
			}
		case <-killAt:
			cmd.Process.Kill()
			killAt, killed = nil, true
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child acknowledged nothing in 60s:\n%s", stderr.String())
		}
	}
}

// reclaimChild is the child: rounds from its start on, until killed,
// reclaiming as soon as anything is free.
func reclaimChild(t *testing.T, path string) {
	start, err := strconv.Atoi(os.Getenv(reclaimStartEnv))
	if err != nil {
		t.Fatal(err)
	}
	sqlitelayer.SetReclaimForTest(8<<10, 0)
	if start%2 == 1 {
		// Every other child gives space back in one transaction.
		sqlitelayer.SetReclaimFullForTest(0)
	}
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Second)
	for g := start; g < reclaimSlots && time.Now().Before(deadline); g++ {
		mustWrite(t, f, reclaimChildData(g, reclaimRangeLen), reclaimRangeOff)
		mustWrite(t, f, reclaimChildData(g, reclaimSlotLen), reclaimSlotsOff+int64(g)*reclaimSlotLen)
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := f.Zero(reclaimRangeOff, reclaimRangeLen); err != nil {
			t.Fatal(err)
		}
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("discarded %d\n", g)
		time.Sleep(20 * time.Millisecond) // the reclaim runs
	}
	t.Fatal("child was not killed in time")
}

// TestFullReclaimYields: a request that comes while the reclaimer gives
// a long free list back in one transaction cancels it instead of waiting
// behind it (seconds, for a gigabyte freed); the layer is as before the
// cancelled attempt, the request's write is kept, and the reclaim is done
// once requests pause.
func TestFullReclaimYields(t *testing.T) {
	started := make(chan struct{})
	cancelled := make(chan bool, 1)
	var first sync.Once
	t.Cleanup(sqlitelayer.SetReclaimFullForTest(0))
	// Cleanups run last first: the hook goes after the layer is closed.
	t.Cleanup(sqlitelayer.SetFullReclaimHookForTest(func(ctx context.Context) {
		first.Do(func() {
			close(started)
			// Held until a request cancels it; the deadline only keeps
			// a broken build from hanging.
			select {
			case <-ctx.Done():
				cancelled <- true
			case <-time.After(time.Minute):
				cancelled <- false
			}
		})
	}))
	path := newLayerPath(t, "yield.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 128 << 20})
	writeToFree(t, f)
	rounds := freeWritten(t, f)
	select {
	case <-started:
	case <-time.After(2 * time.Minute):
		t.Fatal("no full reclaim began within 2 minutes")
	}
	// A request while it runs.
	mustWrite(t, f, fill(4096, 7), 120<<20)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if !<-cancelled {
		t.Fatal("the request waited for the full reclaim instead of cancelling it")
	}
	awaitReclaim(t, rounds)
	if got := mustRead(t, f, 120<<20, 4096); !bytes.Equal(got, fill(4096, 7)) {
		t.Error("the write made during the reclaim does not read back")
	}
	checkMiB(t, f, 100<<20, 1, 3)
	if got := mustRead(t, f, 0, 64<<20); !bytes.Equal(got, make([]byte, 64<<20)) {
		t.Error("the zeroed range does not read as zeros")
	}
	if size := fileSize(t, path); size > 8<<20 {
		t.Errorf("database file is %d bytes after the reclaim, want < 8 MiB", size)
	}
	if mode, err := sqlitelayer.AutoVacuumForTest(f); err != nil || mode != 2 {
		t.Errorf("auto_vacuum after the reclaim: %d, %v; want 2 (INCREMENTAL)", mode, err)
	}
}

// TestFullReclaimWaitsForQuiet: a long free list is not given back
// while commits keep coming less than reclaimFullQuiet apart (a guest
// that works in bursts), and is once they stop.
func TestFullReclaimWaitsForQuiet(t *testing.T) {
	t.Cleanup(sqlitelayer.SetReclaimFullQuietForTest(0, 3*time.Second))
	path := newLayerPath(t, "quiet.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 128 << 20})
	writeToFree(t, f)
	rounds := freeWritten(t, f)
	for i := range 40 {
		mustWrite(t, f, fill(4096, byte(i)), 120<<20)
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-rounds:
			if r.Pages > 0 || r.Err != nil {
				t.Fatalf("a reclaim gave back %d pages (%v) while commits came 50 ms apart", r.Pages, r.Err)
			}
		case <-time.After(50 * time.Millisecond):
		}
	}
	awaitReclaim(t, rounds)
	if got := mustRead(t, f, 120<<20, 4096); !bytes.Equal(got, fill(4096, 39)) {
		t.Error("the last write before the reclaim does not read back")
	}
	checkMiB(t, f, 100<<20, 1, 3)
	if size := fileSize(t, path); size > 8<<20 {
		t.Errorf("database file is %d bytes after the reclaim, want < 8 MiB", size)
	}
}

// TestSmallZeroWritesPackTombstones: zeros written 64 KiB at a time over
// a diff layer's data (qemu-img bench -w, a guest zeroing its free
// space) leave the tombstones packed in few leaves, not one near-empty
// leaf per eight sectors that no reclaim can give back, and the layer
// reads as zeros over data it kept.
func TestSmallZeroWritesPackTombstones(t *testing.T) {
	path := newLayerPath(t, "zeros.hibdisk")
	opts := sqlitelayer.CreateOptions{Size: 128 << 20}
	opts.Parent = rawParent(t, filepath.Dir(path), opts.Size)
	f := createWriteBack(t, path, opts)
	writeMiB(t, f, 0, 64, 5)
	writeMiB(t, f, 100<<20, 1, 9)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	// Every other 64 KiB, then the rest: no two zero writes of a pass
	// are adjacent, so write-back cannot join them into larger runs.
	zeros := make([]byte, 64<<10)
	for _, start := range []int64{0, 64 << 10} {
		for off := start; off < 64<<20; off += 2 * int64(len(zeros)) {
			mustWrite(t, f, zeros, off)
		}
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil { // finishes the reclaim
		t.Fatal(err)
	}
	// 16,384 tombstones: about 0.5 MiB packed; 15 a leaf, 4.4 MiB.
	if size := fileSize(t, path); size > 2<<20 {
		t.Errorf("layer is %d bytes after 64 MiB of its data were zeroed 64 KiB at a time, want < 2 MiB", size)
	}
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := mustRead(t, f, 0, 64<<20); !bytes.Equal(got, make([]byte, 64<<20)) {
		t.Error("the zeroed range does not read as zeros")
	}
	checkMiB(t, f, 100<<20, 1, 9)
	if rows := rowKinds(t, path, "sectors"); len(rows) != 16384+256 {
		t.Errorf("%d rows, want 16,384 tombstones and 256 rows of data", len(rows))
	}
}
