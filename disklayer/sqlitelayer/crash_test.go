package sqlitelayer_test

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

var crashIterations = flag.Int("crash.iterations", 20, "number of kill -9 rounds in TestCrashSafety")

// Environment of the child process of TestCrashSafety.
const (
	crashChildEnv = "HIBDISK_CRASH_CHILD" // layer path; set only in the child
	crashSeedEnv  = "HIBDISK_CRASH_SEED"  // master seed of the op sequence
	crashStartEnv = "HIBDISK_CRASH_START" // first group to run
	// "true": the child opens the layer with write-back.
	crashWriteBackEnv = "HIBDISK_CRASH_WRITEBACK"
	// "true": the child reclaims free space as soon as 8 KiB are free,
	// without waiting, so that kills land in reclaims too.
	crashReclaimEnv = "HIBDISK_CRASH_RECLAIM"
)

const (
	crashDiskSize   = 8 << 20
	crashSectorSize = 4096
)

// crashOp is one write or zero of a crash-test group.
type crashOp struct {
	zero bool
	off  int64
	data []byte // for writes; len is the length for zeros too
}

// crashGroup returns group number g of the deterministic op sequence: a
// few writes and zeros, aligned and not, that the child runs and then
// flushes as one batch.
func crashGroup(seed uint64, g int) []crashOp { return crashGroupOn(seed, g, crashDiskSize, 128<<10) }

// crashGroupOn is crashGroup on a disk of diskSize bytes, with writes and
// zeros of up to maxLen bytes.
func crashGroupOn(seed uint64, g int, diskSize, maxLen int64) []crashOp {
	rng := rand.New(rand.NewPCG(seed, uint64(g)))
	ops := make([]crashOp, 1+rng.IntN(6))
	for i := range ops {
		n := 1 + rng.Int64N(maxLen)
		off := rng.Int64N(diskSize)
		if rng.IntN(2) == 0 {
			off -= off % crashSectorSize
			n = (n + crashSectorSize - 1) / crashSectorSize * crashSectorSize
		}
		n = min(n, diskSize-off)
		op := crashOp{zero: rng.IntN(5) == 0, off: off, data: make([]byte, n)}
		if !op.zero {
			for j := range op.data {
				op.data[j] = byte(rng.Uint32())
			}
		}
		ops[i] = op
	}
	return ops
}

func applyCrashGroup(model []byte, ops []crashOp) {
	for _, op := range ops {
		if op.zero {
			clear(model[op.off : op.off+int64(len(op.data))])
		} else {
			copy(model[op.off:], op.data)
		}
	}
}

// TestCrashSafety kills a writing process with SIGKILL at random moments
// and checks that every group of writes acknowledged by a completed Flush
// survived, that the group in flight is either entirely there or entirely
// absent (it was one transaction), and that Check passes. Half the
// children reclaim free space as soon as a commit leaves a little
// (reclaim.go); TestCrashDuringReclaim aims kills at reclaims.
//
// The test binary re-executes itself as the child (crashChildEnv set).
// The child runs groups start, start+1, ... of a deterministic sequence,
// flushing after each and printing "flushed N" once Flush returned.
func TestCrashSafety(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(t, path)
		return
	}
	if testing.Short() {
		t.Skip("kills child processes; skipped in -short mode")
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	dir := t.TempDir()
	path := checkedLayer(t, filepath.Join(dir, "crash.hibdisk"))
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: crashDiskSize, SectorSize: crashSectorSize})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	model := make([]byte, crashDiskSize) // state after `done` groups
	done := 0
	rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
	for iter := range *crashIterations {
		// Every other child writes through write-back.
		acked := runCrashChild(t, path, seed, done, time.Duration(rng.IntN(150))*time.Millisecond, iter%2 == 1, iter%4 >= 2)
		for ; done < acked; done++ {
			applyCrashGroup(model, crashGroup(seed, done))
		}
		// The next group may have committed without its line reaching us.
		next := bytes.Clone(model)
		applyCrashGroup(next, crashGroup(seed, done))

		got := readCrashLayer(t, path)
		switch {
		case bytes.Equal(got, model):
		case bytes.Equal(got, next):
			model, done = next, done+1
		default:
			t.Fatalf("iteration %d (seed %d): after %d acknowledged groups the layer holds neither that state nor the next one (first difference at byte %d)",
				iter, seed, done, firstDifference(got, model))
		}
		r, err := sqlitelayer.Check(path)
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK() {
			t.Fatalf("iteration %d: Check after kill -9:\n%s", iter, r)
		}
	}
	t.Logf("%d kills, %d groups survived", *crashIterations, done)
	if done == 0 {
		t.Error("no group was ever acknowledged: the child never got to write")
	}
}

// runCrashChild starts the child at group start, lets it flush at least
// one group and run for delay more, kills it, and returns the number of
// groups acknowledged in total.
func runCrashChild(t *testing.T, path string, seed uint64, start int, delay time.Duration, writeBack, reclaim bool) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		crashChildEnv+"="+path,
		crashSeedEnv+"="+strconv.FormatUint(seed, 10),
		crashStartEnv+"="+strconv.Itoa(start),
		crashWriteBackEnv+"="+strconv.FormatBool(writeBack),
		crashReclaimEnv+"="+strconv.FormatBool(reclaim),
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	acked := start
	parse := func(line string) {
		if n, ok := strings.CutPrefix(line, "flushed "); ok {
			v, err := strconv.Atoi(n)
			if err != nil || v != acked {
				t.Errorf("child said %q, expected flushed %d", line, acked)
			}
			acked = v + 1
		}
	}
	timeout := time.After(60 * time.Second)
	var killAt <-chan time.Time
	for killAt == nil {
		select {
		case line, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatalf("child exited before flushing anything:\n%s", stderr.String())
			}
			parse(line)
			if acked > start {
				killAt = time.After(delay)
			}
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child flushed nothing in 60s:\n%s", stderr.String())
		}
	}
	for killed := false; ; {
		select {
		case line, ok := <-lines:
			if !ok {
				err := cmd.Wait()
				if ws, isExit := err.(*exec.ExitError); !killed || !isExit || ws.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("child ended on its own (%v):\n%s", err, stderr.String())
				}
				return acked
			}
			parse(line)
		case <-killAt:
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed, killAt = true, nil
		}
	}
}

// crashChild is the child process: it runs groups forever (until killed).
func crashChild(t *testing.T, path string) {
	seed, err := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	start, err := strconv.Atoi(os.Getenv(crashStartEnv))
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv(crashReclaimEnv) == "true" {
		sqlitelayer.SetReclaimForTest(8<<10, 0)
	}
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{WriteBack: os.Getenv(crashWriteBackEnv) == "true"})
	if err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(50 * time.Second) // never outlive the parent's patience
	for g := start; time.Now().Before(deadline); g++ {
		for _, op := range crashGroup(seed, g) {
			if op.zero {
				err = f.Zero(op.off, int64(len(op.data)))
			} else {
				_, err = f.WriteAt(op.data, op.off)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("flushed %d\n", g)
	}
	t.Fatal("child was not killed in time")
}

func readCrashLayer(t *testing.T, path string) []byte {
	t.Helper()
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open after kill -9: %v", err)
	}
	defer f.Close()
	p := make([]byte, f.Size())
	if _, err := f.ReadAt(p, 0); err != nil {
		t.Fatalf("read after kill -9: %v", err)
	}
	return p
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
