package qemu_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

const (
	diskSize    = 32 << 20 // small disks keep the suite fast
	baseDataLen = 4 << 20  // the base holds Pattern("base") over [0, 4 MiB)
	patternLen  = 64 << 10 // the guest's writes at each end of the disk
)

// extent is a run of a chain's map, as tests compare them.
type extent struct {
	Start, Length int64
	Kind          disklayer.ExtentKind
}

// topExtents lists the runs the top layer (depth 0) of the chain at path
// supplies.
func topExtents(t *testing.T, path string) []extent {
	t.Helper()
	d, err := diffdisk.OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	runs, err := diffdisk.Map(d)
	if err != nil {
		t.Fatal(err)
	}
	var out []extent
	for _, r := range runs {
		if r.Depth == 0 {
			out = append(out, extent{r.Start, r.Length, r.Kind})
		}
	}
	return out
}

// checkPatternsJob verifies what TaskPatterns with seed left in the chain
// at top over a raw base written by writeRawBase(.., "base", baseDataLen):
// the patterns at both ends, the base's data between them, and nothing
// else in the top layer.
func checkPatternsJob(t *testing.T, top, seed string, res guestproto.Result) {
	t.Helper()
	checkPatternsLayer(t, top, seed)
	// The guest read [1 MiB, 2 MiB) of the base through NBD.
	if want := sha(guestproto.PatternBytes("base", 1<<20, 1<<20)); res.Notes["sample"] != want {
		t.Errorf("guest read base bytes with sha256 %s, want %s", res.Notes["sample"], want)
	}
}

// checkPatternsLayer is checkPatternsJob without the guest's sample: what
// the chain at top holds after the guest wrote the patterns with seed.
func checkPatternsLayer(t *testing.T, top, seed string) {
	t.Helper()
	checkLayer(t, top)
	if got, want := readChain(t, top, 0, patternLen), guestproto.PatternBytes(seed, 0, patternLen); !bytes.Equal(got, want) {
		t.Errorf("%s: the guest's pattern at 0 is not in the chain", top)
	}
	end := int64(diskSize - patternLen)
	if got, want := readChain(t, top, end, patternLen), guestproto.PatternBytes(seed, end, patternLen); !bytes.Equal(got, want) {
		t.Errorf("%s: the guest's pattern at %d is not in the chain", top, end)
	}
	rest := baseDataLen - patternLen
	if got, want := readChain(t, top, patternLen, rest), guestproto.PatternBytes("base", patternLen, rest); !bytes.Equal(got, want) {
		t.Errorf("%s: the base's data beside the guest's write changed", top)
	}
	want := []extent{{0, patternLen, disklayer.Data}, {end, patternLen, disklayer.Data}}
	if diff := cmp.Diff(want, topExtents(t, top)); diff != "" {
		t.Errorf("%s: top layer extents (-want +got):\n%s", top, diff)
	}
}

func patternsParams(seed string) map[string]string {
	return map[string]string{
		"disk": "data", "seed": seed, "len": fmt.Sprint(patternLen),
		"sample-off": fmt.Sprint(1 << 20), "sample-len": fmt.Sprint(1 << 20),
	}
}

// TestBootDiffOverRawBase: the guest writes and fsyncs patterns at both
// ends of a diff layer over a raw base; the data is in the chain, in the
// top layer only, and the base file's bytes are unchanged.
func TestBootDiffOverRawBase(t *testing.T) {
	guestKit(t)
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.img"), filepath.Join(dir, "job.db")
	writeRawBase(t, base, diskSize, "base", baseDataLen)
	baseSum := fileSHA(t, base)
	if err := diffdisk.Create(top, diffdisk.CreateOptions{Backing: base, BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}

	d := openDisk(t, top)
	res := runGuest(t, guestproto.TaskPatterns, patternsParams("job"), qemu.Disk{Name: "data", Layer: d})
	if err := d.Close(); err != nil {
		t.Fatalf("close %s: %v", top, err)
	}
	if res.Notes["size"] != fmt.Sprint(diskSize) {
		t.Errorf("guest saw a disk of %s bytes, want %d", res.Notes["size"], diskSize)
	}
	checkPatternsJob(t, top, "job", res)
	if fileSHA(t, base) != baseSum {
		t.Errorf("the raw base %s changed", base)
	}
}
