package qemu_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// TestParallelJobsShareReadOnlyBase is the CI pattern: two VMs run at the
// same time, each on its own diff layer over one golden base that is a
// read-only file; both pass, each job's layer holds only its own writes,
// and the base is byte-identical afterwards.
func TestParallelJobsShareReadOnlyBase(t *testing.T) {
	guestKit(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	writeRawBase(t, raw, diskSize, "base", baseDataLen)
	base := filepath.Join(dir, "golden.db")
	hibdisk(t, "convert", raw, base)
	if err := os.Chmod(base, 0o444); err != nil {
		t.Fatal(err)
	}
	baseSum := fileSHA(t, base)
	jobs := []string{"job1", "job2"}
	for _, job := range jobs {
		if err := diffdisk.Create(filepath.Join(dir, job+".db"), diffdisk.CreateOptions{Backing: base}); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	results := map[string]guestproto.Result{}
	t.Run("vms", func(t *testing.T) {
		for _, job := range jobs {
			t.Run(job, func(t *testing.T) {
				t.Parallel()
				d := openDisk(t, filepath.Join(dir, job+".db"))
				res := runGuest(t, guestproto.TaskPatterns, patternsParams(job), qemu.Disk{Name: "data", Layer: d})
				if err := d.Close(); err != nil {
					t.Fatal(err)
				}
				mu.Lock()
				results[job] = res
				mu.Unlock()
			})
		}
	})
	if t.Failed() {
		return
	}
	for _, job := range jobs {
		checkPatternsJob(t, filepath.Join(dir, job+".db"), job, results[job])
	}
	if fileSHA(t, base) != baseSum {
		t.Errorf("the shared base %s changed", base)
	}
	checkLayer(t, base)
}

// mapEntry is one element of `hibdisk map --json`.
type mapEntry struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Depth   int   `json:"depth"`
	Present bool  `json:"present"`
	Zero    bool  `json:"zero"`
	Data    bool  `json:"data"`
}

// mapAt returns the map entries that overlap [off, off+n).
func mapAt(entries []mapEntry, off, n int64) []mapEntry {
	var out []mapEntry
	for _, e := range entries {
		if e.Start < off+n && off < e.Start+e.Length {
			out = append(out, e)
		}
	}
	return out
}

// TestGuestDiscard: BLKDISCARD in the guest reaches the layers as NBD
// TRIM. Over the base's data it leaves tombstones in the top layer (zero,
// present, depth 0 in `hibdisk map`); over the guest's own writes above
// the base's data nothing of them remains; where nothing was ever written
// it adds no rows (a hole that map shows as absent).
func TestGuestDiscard(t *testing.T) {
	guestKit(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "golden.img")
	const dataLen = 16 << 20
	writeRawBase(t, raw, diskSize, "base", dataLen)
	base := filepath.Join(dir, "golden.db")
	hibdisk(t, "convert", raw, base)
	top := filepath.Join(dir, "job.db")
	if err := diffdisk.Create(top, diffdisk.CreateOptions{Backing: base}); err != nil {
		t.Fatal(err)
	}

	const (
		overBase  = 4 << 20  // [4 MiB, 8 MiB): base data
		written   = 20 << 20 // [20 MiB, 22 MiB): the guest's own writes
		neverUsed = 26 << 20 // [26 MiB, 27 MiB): nothing anywhere
	)
	d := openDisk(t, top)
	res := runGuest(t, guestproto.TaskDiscard, map[string]string{
		"disk": "data", "seed": "discard", "write-off": "20971520", "len": "2097152",
		"discard": "4194304+4194304,20971520+2097152,27262976+1048576",
	}, qemu.Disk{Name: "data", Layer: d})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if res.Notes["discarded"] != "3" {
		t.Errorf("guest discarded %q ranges, want 3", res.Notes["discarded"])
	}
	checkLayer(t, top)

	var entries []mapEntry
	out := hibdisk(t, "map", "--json", top)
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("hibdisk map --json: %v\n%s", err, out)
	}
	t.Logf("hibdisk map --json %s:\n%s", top, out)
	for _, e := range mapAt(entries, overBase, 4<<20) {
		if !(e.Present && e.Zero && e.Depth == 0 && e.Start >= overBase && e.Start+e.Length <= overBase+4<<20) {
			t.Errorf("over the base's data the discard should leave tombstones in the top layer; map has %+v", e)
		}
	}
	for _, e := range mapAt(entries, written, 2<<20) {
		if e.Data {
			t.Errorf("the guest's discarded writes still show data: %+v", e)
		}
	}
	for _, e := range mapAt(entries, neverUsed, 1<<20) {
		if e.Present {
			t.Errorf("discarding never-written space added rows: %+v", e)
		}
	}
	// The rest of the base's data still shows through.
	for _, r := range [][2]int64{{0, overBase}, {overBase + 4<<20, dataLen - overBase - 4<<20}} {
		for _, e := range mapAt(entries, r[0], r[1]) {
			if !(e.Data && e.Depth == 1) {
				t.Errorf("base data at %d+%d should show through from depth 1; map has %+v", r[0], r[1], e)
			}
		}
	}
}
