package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConvertKilledLeavesNoImage: convert killed with SIGKILL halfway
// leaves nothing at DST (before, a partial layer that check passed as
// complete, and a re-run said "file already exists"); the re-run then
// makes a complete copy.
func TestConvertKilledLeavesNoImage(t *testing.T) {
	dir := testDir(t)
	writeKillSource(t, filepath.Join(dir, "src.img"))
	cmd := exec.Command(hibdiskBinary(t), "convert", "src.img", "dst.db")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	partial := func() []string {
		m, _ := filepath.Glob(filepath.Join(dir, ".dst.db.partial-*"))
		return m
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(partial()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("convert never started writing")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // halfway, with rows written
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := os.Stat(filepath.Join(dir, "dst.db")); err == nil {
		t.Fatal("dst.db exists after convert was killed (or convert finished before the kill: make the source bigger)")
	}
	if len(partial()) == 0 {
		t.Fatal("no partial file: convert finished before the kill")
	}
	// The leftover is hidden and not named like a layer; check names it,
	// and a re-run is not blocked by it.
	left := partial()
	if r := hib(t, dir, "check", "dst.db"); r.code == 0 || !strings.Contains(r.stderr, "interrupted") || !strings.Contains(r.stderr, filepath.Base(left[0])) {
		t.Errorf("check of the missing dst.db: exit %d, stderr %q; want it to name the leftover of the interrupted convert", r.code, r.stderr)
	}
	for _, p := range left {
		if strings.HasSuffix(p, ".db") || !strings.HasPrefix(filepath.Base(p), ".") {
			t.Errorf("partial file %s looks like a layer", p)
		}
	}
	mustHib(t, dir, "convert", "src.img", "dst.db")
	if out := mustHib(t, dir, "compare", "src.img", "dst.db"); !strings.Contains(out, "identical") {
		t.Errorf("compare after the re-run: %s", out)
	}
	if m := partial(); len(m) != len(left) {
		t.Errorf("a complete convert left %v (the killed run left %v)", m, left)
	}
	if out := mustHib(t, dir, "check", "dst.db"); !strings.Contains(out, filepath.Base(left[0])) {
		t.Errorf("check of the complete dst.db does not name the leftover beside it:\n%s", out)
	}
	for _, p := range left {
		removeLeftover(t, p)
	}
}

func removeLeftover(t *testing.T, p string) {
	t.Helper()
	for _, s := range []string{"", "-wal", "-shm"} {
		os.Remove(p + s)
	}
}

// writeKillSource writes a raw image a convert takes long enough to copy
// to be killed halfway: 128 MiB of random data spread over 512 MiB.
func writeKillSource(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	chunk := make([]byte, 1<<20)
	for i := range 128 {
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(chunk, int64(i)*4<<20); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(512 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
}
