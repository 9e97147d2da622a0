package diffdisk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/layertest"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// checkOnCleanup runs Check, the whole layer check (checkers_test.go links
// the packages that register theirs), on every hibdisk layer file in dir
// when the test ends.
func checkOnCleanup(t *testing.T, dir string) {
	t.Helper()
	t.Cleanup(func() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Errorf("list %s: %v", dir, err)
			return
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			if e.IsDir() {
				continue
			}
			if ok, err := sqlitelayer.IsLayer(path); err != nil || !ok {
				continue
			}
			r, err := Check(path)
			if err != nil {
				t.Errorf("check %s: %v", path, err)
				continue
			}
			for _, n := range r.Notes {
				if strings.Contains(n, "tables not checked") {
					t.Errorf("check %s: %s", path, n)
				}
			}
			if _, broken := brokenParents.Load(path); broken {
				// The test broke this layer's parent on purpose: Check
				// must notice, and must find nothing else wrong.
				if r.OK() {
					t.Errorf("check %s: no problem found with its deliberately broken parent", path)
				}
				for _, p := range r.Problems {
					if !strings.Contains(p, "parent") {
						t.Errorf("check %s: %s", path, p)
					}
				}
				continue
			}
			if !r.OK() {
				t.Errorf("check %s:\n%s", path, r)
			}
		}
	})
}

// brokenParents holds the layer files whose parent a test broke on
// purpose (path -> struct{}).
var brokenParents sync.Map

func parentBroken(path string) { brokenParents.Store(path, struct{}{}) }

// testDir is a fresh directory whose layers are checked at the end.
func testDir(t *testing.T) string {
	dir := t.TempDir()
	checkOnCleanup(t, dir)
	return dir
}

func mustCreate(t testing.TB, path string, opts CreateOptions) {
	t.Helper()
	if err := Create(path, opts); err != nil {
		t.Fatal(err)
	}
}

func mustOpen(t testing.TB, path string, opts Options) *Disk {
	t.Helper()
	d, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustClose(t testing.TB, c interface{ Close() error }) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// writeFile opens the layer or raw image at path alone and writes p.
func writeRaw(t testing.TB, path string, size int64, writes map[int64][]byte) {
	t.Helper()
	raw, err := rawlayer.Create(path, size)
	if err != nil {
		t.Fatal(err)
	}
	for off, p := range writes {
		mustWrite(t, raw, p, off)
	}
	mustClose(t, raw)
}

// chainFiles creates base (raw when rawBase) ← mid.db ← top.db in dir,
// all of size bytes, and returns the top's path.
func chainFiles(t testing.TB, dir string, size int64, sectorSize int, rawBase bool) string {
	t.Helper()
	return chainFilesWriting(t, dir, size, sectorSize, rawBase, nil)
}

// chainFilesWriting is chainFiles that lets write fill each hibdisk layer
// (named "base.db", "mid.db", "top.db") through its chain before the
// next layer is made over it: a layer written after a child was made
// over it is a changed base, which the child refuses.
func chainFilesWriting(t testing.TB, dir string, size int64, sectorSize int, rawBase bool, write func(name string, d *Disk)) string {
	t.Helper()
	fill := func(path string) {
		if write != nil {
			d := mustOpen(t, path, Options{})
			write(filepath.Base(path), d)
			mustClose(t, d)
		}
	}
	base := filepath.Join(dir, "base.db")
	format := ""
	if rawBase {
		base = filepath.Join(dir, "base.img")
		format = disklayer.FormatRaw
		writeRaw(t, base, size, nil)
	} else {
		mustCreate(t, base, CreateOptions{Size: size, SectorSize: sectorSize})
		fill(base)
	}
	mid, top := filepath.Join(dir, "mid.db"), filepath.Join(dir, "top.db")
	mustCreate(t, mid, CreateOptions{Backing: base, BackingFormat: format, SectorSize: sectorSize})
	fill(mid)
	mustCreate(t, top, CreateOptions{Backing: mid})
	fill(top)
	return top
}

func TestConformanceFileStacks(t *testing.T) {
	for _, rawBase := range []bool{false, true} {
		name := "sqlite-base"
		if rawBase {
			name = "raw-base"
		}
		t.Run(name, func(t *testing.T) {
			layertest.Run(t, layertest.Factory{
				New: func(t *testing.T, size int64, sectorSize int, hasParent bool) disklayer.Disk {
					top := chainFiles(t, testDir(t), size, sectorSize, rawBase)
					return mustOpen(t, top, Options{})
				},
				Reopen: func(t *testing.T, d disklayer.Disk) disklayer.Disk {
					path := d.(*Disk).meta[0].path
					if err := d.Close(); err != nil {
						t.Fatalf("Close: %v", err)
					}
					return mustOpen(t, path, Options{})
				},
				SectorSizes: []int{512, 4096},
			})
		})
	}
}

func TestOpenChainReadsThroughRawAndHibdisk(t *testing.T) {
	dir := testDir(t)
	const size = 1 << 20
	base := filepath.Join(dir, "base.img")
	writeRaw(t, base, size, map[int64][]byte{0: fill(8192, 0xb0), 65536: fill(4096, 0xb1)})
	mid, top := filepath.Join(dir, "mid.db"), filepath.Join(dir, "top.db")
	mustCreate(t, mid, CreateOptions{Backing: base, BackingFormat: "raw"})
	m := mustOpen(t, mid, Options{})
	mustWrite(t, m, fill(4096, 0x11), 4096)
	mustClose(t, m)
	mustCreate(t, top, CreateOptions{Backing: mid})
	d := mustOpen(t, top, Options{})
	mustWrite(t, d, fill(10, 0x22), 65536+100)
	mustClose(t, d)

	d = mustOpen(t, top, Options{ReadOnly: true})
	defer d.Close()
	want := make([]byte, size)
	copy(want, fill(4096, 0xb0))
	copy(want[4096:], fill(4096, 0x11))
	copy(want[65536:], fill(4096, 0xb1))
	copy(want[65536+100:], fill(10, 0x22))
	if got := mustRead(t, d, 0, size); !bytes.Equal(got, want) {
		t.Fatalf("chain differs at %d", firstDifference(got, want))
	}
	layers, err := d.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var summary []string
	for _, l := range layers {
		summary = append(summary, fmt.Sprintf("%d %s %s %d %d", l.Depth, filepath.Base(l.Path), l.Format, l.Size, l.SectorSize))
	}
	wantSummary := []string{"0 top.db hibdisk 1048576 4096", "1 mid.db hibdisk 1048576 4096", "2 base.img raw 1048576 512"}
	if !slices.Equal(summary, wantSummary) {
		t.Fatalf("Layers: %q, want %q", summary, wantSummary)
	}
	if layers[0].Stats == nil || layers[0].Stats.DataSectors != 1 || layers[1].Stats.DataSectors != 1 {
		t.Fatalf("Stats: top %+v, mid %+v; want one data sector each", layers[0].Stats, layers[1].Stats)
	}
	if p := layers[1].Parent; p == nil || p.Path != "base.img" || p.Format != "raw" || !strings.HasPrefix(p.Digest, rawlayer.DigestPrefix) {
		t.Fatalf("mid's parent reference: %+v", p)
	}
}

func TestCreateRecordsRelativePathAndGeometry(t *testing.T) {
	dir := testDir(t)
	sub := filepath.Join(dir, "jobs")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	checkOnCleanup(t, sub)
	base := filepath.Join(dir, "base.db")
	mustCreate(t, base, CreateOptions{Size: 1 << 20, SectorSize: 1024})
	child := filepath.Join(sub, "job.db")
	mustCreate(t, child, CreateOptions{Backing: base, Label: "job 1"})
	d := mustOpen(t, child, Options{ReadOnly: true})
	defer d.Close()
	layers, err := d.Layers()
	if err != nil {
		t.Fatal(err)
	}
	top := layers[0]
	if top.Size != 1<<20 || top.SectorSize != 1024 || top.Label != "job 1" {
		t.Fatalf("child geometry %d bytes, %d-byte sectors, label %q; want the parent's 1 MiB, 1024, \"job 1\"", top.Size, top.SectorSize, top.Label)
	}
	if top.Parent.Path != "../base.db" || top.Parent.UUID != layers[1].UUID || top.Parent.Size != 1<<20 {
		t.Fatalf("parent reference %+v, want ../base.db with the base's uuid %s", top.Parent, layers[1].UUID)
	}

	// Larger than the parent is fine; smaller is refused.
	mustCreate(t, filepath.Join(dir, "big.db"), CreateOptions{Backing: base, Size: 2 << 20})
	err = Create(filepath.Join(dir, "small.db"), CreateOptions{Backing: base, Size: 512 << 10})
	if !errors.Is(err, disklayer.ErrInvalid) || !strings.Contains(err.Error(), "smaller") {
		t.Fatalf("smaller than the parent: %v, want ErrInvalid", err)
	}
}

func TestCreateNeverGuessesRaw(t *testing.T) {
	dir := testDir(t)
	img := filepath.Join(dir, "disk.img")
	writeRaw(t, img, 1<<20, nil)
	err := Create(filepath.Join(dir, "a.db"), CreateOptions{Backing: img})
	if !errors.Is(err, disklayer.ErrNotLayer) || !strings.Contains(err.Error(), "-F raw") {
		t.Fatalf("raw backing without a format: %v, want ErrNotLayer asking for -F raw", err)
	}
	err = Create(filepath.Join(dir, "b.db"), CreateOptions{Backing: img, BackingFormat: "hibdisk"})
	if !errors.Is(err, disklayer.ErrNotLayer) {
		t.Fatalf("raw backing given as hibdisk: %v, want ErrNotLayer", err)
	}
	err = Create(filepath.Join(dir, "c.db"), CreateOptions{Backing: img, BackingFormat: "qcow3"})
	if !errors.Is(err, disklayer.ErrInvalid) {
		t.Fatalf("unknown backing format: %v, want ErrInvalid", err)
	}
	err = Create(filepath.Join(dir, "c.db"), CreateOptions{Backing: img, BackingFormat: "qcow2"})
	if !errors.Is(err, disklayer.ErrInvalid) || !strings.Contains(err.Error(), "says raw") {
		t.Fatalf("a raw image given as qcow2: %v, want ErrInvalid naming raw", err)
	}
	for _, name := range []string{"a.db", "b.db", "c.db"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a refused create", name)
		}
	}
	mustCreate(t, filepath.Join(dir, "d.db"), CreateOptions{Backing: img, BackingFormat: "raw"})
	d := mustOpen(t, filepath.Join(dir, "d.db"), Options{ReadOnly: true})
	defer d.Close()
	if d.SectorSize() != 4096 {
		t.Fatalf("diff over a 1 MiB raw image has %d-byte sectors, want 4096", d.SectorSize())
	}
}

func TestOpenRefusesMissingParent(t *testing.T) {
	dir := testDir(t)
	top := chainFiles(t, dir, 1<<20, 4096, false)
	if err := os.Remove(filepath.Join(dir, "base.db")); err != nil {
		t.Fatal(err)
	}
	parentBroken(filepath.Join(dir, "mid.db"))
	_, err := Open(top, Options{})
	if !errors.Is(err, disklayer.ErrParentMismatch) {
		t.Fatalf("missing parent: %v, want ErrParentMismatch", err)
	}
	for _, part := range []string{`parent "base.db" of`, "mid.db", "is missing", "hibdisk layer"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("error %q does not mention %q", err, part)
		}
	}
}

func TestOpenRefusesReplacedParent(t *testing.T) {
	dir := testDir(t)
	top := chainFiles(t, dir, 1<<20, 4096, false)
	base := filepath.Join(dir, "base.db")
	old := mustOpen(t, base, Options{ReadOnly: true})
	oldLayers, _ := old.Layers()
	mustClose(t, old)
	if err := os.Remove(base); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, base, CreateOptions{Size: 1 << 20})
	parentBroken(filepath.Join(dir, "mid.db"))
	now := mustOpen(t, base, Options{ReadOnly: true})
	nowLayers, _ := now.Layers()
	mustClose(t, now)

	_, err := Open(top, Options{})
	if !errors.Is(err, disklayer.ErrParentMismatch) {
		t.Fatalf("replaced parent: %v, want ErrParentMismatch", err)
	}
	want := fmt.Sprintf("uuid %s recorded, file now has %s", oldLayers[0].UUID, nowLayers[0].UUID)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
}

func TestOpenRefusesResizedParent(t *testing.T) {
	dir := testDir(t)
	top := chainFiles(t, dir, 1<<20, 4096, false)
	if err := Resize(filepath.Join(dir, "mid.db"), 2<<20, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	parentBroken(top)
	_, err := Open(top, Options{})
	if !errors.Is(err, disklayer.ErrParentMismatch) || !strings.Contains(err.Error(), "size 1048576 recorded, file now has 2097152") {
		t.Fatalf("resized parent: %v, want ErrParentMismatch naming both sizes", err)
	}
}

func TestOpenRefusesChangedRawBase(t *testing.T) {
	dir := testDir(t)
	top := chainFiles(t, dir, 1<<20, 4096, true)
	base := filepath.Join(dir, "base.img")
	before, err := rawlayer.Digest(base)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := rawlayer.Open(base, false)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, raw, []byte("changed"), 12345)
	mustClose(t, raw)
	parentBroken(filepath.Join(dir, "mid.db"))
	after, err := rawlayer.Digest(base)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(top, Options{})
	if !errors.Is(err, disklayer.ErrParentMismatch) {
		t.Fatalf("changed raw base: %v, want ErrParentMismatch", err)
	}
	want := fmt.Sprintf(`open chain %q: parent "base.img" of %q: digest %s recorded, file now has %s`, top, filepath.Join(dir, "mid.db"), before, after)
	if !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error\n%q\ndoes not start with\n%q", err, want)
	}
}

func TestOpenRefusesCycle(t *testing.T) {
	dir := testDir(t)
	a, b := filepath.Join(dir, "a.db"), filepath.Join(dir, "b.db")
	mustCreate(t, a, CreateOptions{Size: 1 << 20})
	mustCreate(t, b, CreateOptions{Backing: a})
	// rebase refuses the loop (and a layer as its own backing file)...
	for _, unsafe := range []bool{false, true} {
		for _, base := range []string{b, a} {
			err := Rebase(a, base, "", unsafe)
			if !errors.Is(err, disklayer.ErrInvalid) || !(strings.Contains(err.Error(), "loop") || strings.Contains(err.Error(), "the layer itself")) {
				t.Fatalf("rebase a over %s (unsafe %v): %v, want a refused loop", filepath.Base(base), unsafe, err)
			}
		}
	}
	// ...so make one the way an older hibdisk let rebase do it.
	setParentRef(t, a, b)
	_, err := Open(b, Options{})
	if !errors.Is(err, disklayer.ErrParentMismatch) || !strings.Contains(err.Error(), "cycle") {
		t.Fatalf("cyclic chain: %v, want ErrParentMismatch naming a cycle", err)
	}
	// check reports the loop (before, it said "No errors"), and a layer
	// that names itself.
	for _, p := range []string{a, b} {
		r, err := Check(p)
		if err != nil || r.OK() || !strings.Contains(r.String(), "loops") {
			t.Errorf("check %s of a looping chain: %v, %v; want a problem naming the loop", filepath.Base(p), r, err)
		}
	}
	setParentRef(t, a, a)
	if r, err := Check(a); err != nil || r.OK() || !strings.Contains(r.String(), "loops") {
		t.Errorf("check of a layer that names itself: %v, %v", r, err)
	}
	// Break the cycle again so the cleanup check can follow the chain.
	if err := Rebase(a, "", "", true); err != nil {
		t.Fatal(err)
	}
}

// setParentRef points the layer at path to the hibdisk layer parent by
// the layer API alone, without the checks rebase makes.
func setParentRef(t *testing.T, path, parent string) {
	t.Helper()
	p, err := sqlitelayer.Open(parent, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	info := p.Info()
	p.Close()
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(filepath.Dir(path), parent)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetParent(&disklayer.ParentRef{Path: rel, Format: disklayer.FormatHibdisk, UUID: info.UUID, Size: info.DiskSize}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenImage(t *testing.T) {
	dir := testDir(t)
	img := filepath.Join(dir, "disk.img")
	writeRaw(t, img, 8192, map[int64][]byte{100: []byte("raw")})
	d, err := OpenImage(img)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.ReadOnly() || d.Depth() != 1 || string(mustRead(t, d, 100, 3)) != "raw" {
		t.Fatalf("raw image opened as read-only %v, depth %d", d.ReadOnly(), d.Depth())
	}
	top := chainFiles(t, dir, 1<<20, 4096, false)
	c, err := OpenImage(top)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.ReadOnly() || c.Depth() != 3 {
		t.Fatalf("layer opened as read-only %v, depth %d; want a read-only chain of 3", c.ReadOnly(), c.Depth())
	}
}

func TestDeepFileChain(t *testing.T) {
	dir := testDir(t)
	const depth, ss = 16, 4096
	// Layer i (from the base) writes sector i through its chain, before
	// layer i+1 is made over it.
	var paths []string
	prev := ""
	for i := range depth {
		p := filepath.Join(dir, fmt.Sprintf("l%02d.db", i))
		if i == 0 {
			mustCreate(t, p, CreateOptions{Size: depth * ss})
		} else {
			mustCreate(t, p, CreateOptions{Backing: prev})
		}
		d := mustOpen(t, p, Options{})
		mustWrite(t, d, fill(ss, byte(i+1)), int64(i)*ss)
		mustClose(t, d)
		paths = append(paths, p)
		prev = p
	}
	d := mustOpen(t, prev, Options{ReadOnly: true})
	defer d.Close()
	if d.Depth() != depth {
		t.Fatalf("chain depth %d, want %d", d.Depth(), depth)
	}
	got := mustRead(t, d, 0, depth*ss)
	for i := range depth {
		if !bytes.Equal(got[i*ss:(i+1)*ss], fill(ss, byte(i+1))) {
			t.Errorf("sector %d does not hold layer %d's data", i, i)
		}
	}
	m, err := Map(d)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range m {
		if want := depth - 1 - i; e.Depth != want || e.Start != int64(i)*ss || e.Path != paths[i] {
			t.Errorf("map extent %d: %+v, want depth %d from %s", i, e, want, paths[i])
		}
	}
}

func TestMap(t *testing.T) {
	dir := testDir(t)
	top := chainFilesWriting(t, dir, 64<<10, 4096, false, func(name string, d *Disk) {
		switch name {
		case "base.db":
			mustWrite(t, d, fill(16<<10, 1), 0)
		case "mid.db":
			mustWrite(t, d, fill(4096, 2), 8192)
		}
	})
	base, mid := filepath.Join(dir, "base.db"), filepath.Join(dir, "mid.db")
	d := mustOpen(t, top, Options{})
	if err := d.Zero(4096, 4096); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, d, fill(4096, 3), 32<<10)
	got, err := Map(d)
	if err != nil {
		t.Fatal(err)
	}
	mustClose(t, d)
	want := []MapExtent{
		{Start: 0, Length: 4096, Kind: disklayer.Data, Depth: 2, Path: base},
		{Start: 4096, Length: 4096, Kind: disklayer.Zero, Depth: 0, Path: top},
		{Start: 8192, Length: 4096, Kind: disklayer.Data, Depth: 1, Path: mid},
		{Start: 12288, Length: 4096, Kind: disklayer.Data, Depth: 2, Path: base},
		{Start: 16384, Length: 16384, Kind: disklayer.Absent, Depth: -1},
		{Start: 32768, Length: 4096, Kind: disklayer.Data, Depth: 0, Path: top},
		{Start: 36864, Length: 28672, Kind: disklayer.Absent, Depth: -1},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Map:\n%+v\nwant\n%+v", got, want)
	}
}

// chainContent reads the whole view of the chain whose top is path.
func chainContent(t *testing.T, path string) []byte {
	t.Helper()
	d, err := OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	return mustRead(t, d, 0, d.Size())
}

func TestCommitIntoHibdiskParent(t *testing.T) {
	dir := testDir(t)
	top := chainFilesWriting(t, dir, 64<<10, 4096, false, func(name string, d *Disk) {
		switch name {
		case "base.db":
			mustWrite(t, d, fill(64<<10, 0x0b), 0)
		case "mid.db":
			mustWrite(t, d, fill(8192, 0x0c), 0)
		}
	})
	mid := filepath.Join(dir, "mid.db")
	d := mustOpen(t, top, Options{})
	mustWrite(t, d, fill(100, 0x0d), 4000) // RMW over mid's data
	if err := d.Zero(16<<10, 8192); err != nil {
		t.Fatal(err)
	}
	mustClose(t, d)
	before := chainContent(t, top)

	if err := Commit(top, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := chainContent(t, mid); !bytes.Equal(got, before) {
		t.Fatalf("mid after commit differs from the chain before at %d", firstDifference(got, before))
	}
	if got := chainContent(t, top); !bytes.Equal(got, before) {
		t.Fatalf("top after commit reads differently at %d", firstDifference(got, before))
	}
	assertEmptyLayer(t, top)
	// The tombstones became tombstones in mid, which has a parent.
	md := mustOpen(t, mid, Options{ReadOnly: true})
	defer md.Close()
	wantMid := []disklayer.Extent{
		{Off: 0, Len: 8192, Kind: disklayer.Data},
		{Off: 8192, Len: 8192, Kind: disklayer.Absent},
		{Off: 16384, Len: 8192, Kind: disklayer.Zero},
		{Off: 24576, Len: 40960, Kind: disklayer.Absent},
	}
	if got := extentsOf(t, md.Layer(0), 0, 64<<10); !slices.Equal(got, wantMid) {
		t.Fatalf("mid's own extents after commit: %v, want %v", got, wantMid)
	}
}

func TestCommitIntoLargerHibdiskBase(t *testing.T) {
	dir := testDir(t)
	base, top := filepath.Join(dir, "base.db"), filepath.Join(dir, "top.db")
	mustCreate(t, base, CreateOptions{Size: 8192})
	mustCreate(t, top, CreateOptions{Backing: base, Size: 16384})
	d := mustOpen(t, top, Options{})
	mustWrite(t, d, fill(4096, 7), 12288)
	mustClose(t, d)
	if err := Commit(top, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	want := slices.Concat(make([]byte, 12288), fill(4096, 7))
	if got := chainContent(t, base); !bytes.Equal(got, want) {
		t.Fatalf("base after commit: %d bytes, differs at %d", len(got), firstDifference(got, want))
	}
	// The top recorded the parent's new size, so the chain still opens.
	if got := chainContent(t, top); !bytes.Equal(got, want) {
		t.Fatal("top after commit reads differently")
	}
}

func TestCommitIntoRawParent(t *testing.T) {
	dir := testDir(t)
	base, top := filepath.Join(dir, "base.img"), filepath.Join(dir, "top.db")
	writeRaw(t, base, 64<<10, map[int64][]byte{0: fill(64<<10, 0xee)})
	mustCreate(t, top, CreateOptions{Backing: base, BackingFormat: "raw"})
	d := mustOpen(t, top, Options{})
	mustWrite(t, d, fill(5000, 0x01), 100)
	if err := d.Zero(32<<10, 8192); err != nil {
		t.Fatal(err)
	}
	mustClose(t, d)
	before := chainContent(t, top)

	if err := Commit(top, CommitOptions{}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, before) {
		t.Fatalf("raw base after commit differs from the chain before at %d", firstDifference(raw, before))
	}
	// The recorded digest was updated: the chain opens and reads the same.
	if got := chainContent(t, top); !bytes.Equal(got, before) {
		t.Fatal("chain after commit reads differently")
	}
	assertEmptyLayer(t, top)
}

// assertEmptyLayer checks that the layer at path holds no disk rows.
func assertEmptyLayer(t *testing.T, path string) {
	t.Helper()
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.DataSectors != 0 || st.TombstoneSectors != 0 {
		t.Fatalf("%s after commit holds %d data rows and %d tombstones, want none", path, st.DataSectors, st.TombstoneSectors)
	}
}

// TestCommitKeep: with Keep the committed layer keeps its rows (qemu-img
// commit -d) and still reads the same.
func TestCommitKeep(t *testing.T) {
	dir := testDir(t)
	base, top := filepath.Join(dir, "base.db"), filepath.Join(dir, "top.db")
	mustCreate(t, base, CreateOptions{Size: 16384})
	mustCreate(t, top, CreateOptions{Backing: base})
	d := mustOpen(t, top, Options{})
	mustWrite(t, d, fill(4096, 9), 4096)
	mustClose(t, d)
	if err := Commit(top, CommitOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	f, err := sqlitelayer.Open(top, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, err := f.Stats(); err != nil || st.DataSectors != 1 {
		t.Fatalf("top after commit with Keep: %+v, %v; want its one data row", st, err)
	}
	want := slices.Concat(make([]byte, 4096), fill(4096, 9), make([]byte, 8192))
	if got := chainContent(t, base); !bytes.Equal(got, want) {
		t.Fatal("base after commit with Keep lacks the data")
	}
}

func TestCommitNeedsParent(t *testing.T) {
	dir := testDir(t)
	base := filepath.Join(dir, "base.db")
	mustCreate(t, base, CreateOptions{Size: 8192})
	if err := Commit(base, CommitOptions{}); !errors.Is(err, disklayer.ErrInvalid) {
		t.Fatalf("commit of a base layer: %v, want ErrInvalid", err)
	}
}

// rebaseFixture: old.db and new.img differ; top.db over old.db has its
// own writes.
func rebaseFixture(t *testing.T) (dir, top, oldBase, newBase string) {
	dir = testDir(t)
	oldBase, newBase, top = filepath.Join(dir, "old.db"), filepath.Join(dir, "new.img"), filepath.Join(dir, "top.db")
	mustCreate(t, oldBase, CreateOptions{Size: 64 << 10})
	o := mustOpen(t, oldBase, Options{})
	mustWrite(t, o, fill(16<<10, 0xa0), 0)    // sectors 0-3
	mustWrite(t, o, fill(4096, 0xa1), 40<<10) // sector 10
	mustClose(t, o)
	writeRaw(t, newBase, 64<<10, map[int64][]byte{
		0:        fill(4096, 0xa0), // sector 0 equal
		8192:     fill(4096, 0xb2), // sector 2 differs
		48 << 10: fill(4096, 0xb3), // sector 12: zero in the old view
	})
	mustCreate(t, top, CreateOptions{Backing: oldBase})
	d := mustOpen(t, top, Options{})
	mustWrite(t, d, fill(4096, 0xcc), 8192) // hides sector 2 anyway
	mustClose(t, d)
	return dir, top, oldBase, newBase
}

func TestRebaseSafeKeepsView(t *testing.T) {
	_, top, _, newBase := rebaseFixture(t)
	before := chainContent(t, top)
	if err := Rebase(top, newBase, "raw", false); err != nil {
		t.Fatal(err)
	}
	if got := chainContent(t, top); !bytes.Equal(got, before) {
		t.Fatalf("view changed by a safe rebase at %d", firstDifference(got, before))
	}
	d := mustOpen(t, top, Options{ReadOnly: true})
	defer d.Close()
	layers, _ := d.Layers()
	if len(layers) != 2 || layers[0].Parent.Path != "new.img" || layers[1].Format != "raw" {
		t.Fatalf("after rebase the chain is %+v", layers)
	}
	// Copied: sectors 1 and 3 (old data, new zeros), 10 (old data),
	// 12 (old zeros over new data, a tombstone); not 0 (equal), not 2
	// (the top held it).
	want := []disklayer.Extent{
		{Off: 0, Len: 4096, Kind: disklayer.Absent},
		{Off: 4096, Len: 12288, Kind: disklayer.Data},
		{Off: 16384, Len: 24576, Kind: disklayer.Absent},
		{Off: 40960, Len: 4096, Kind: disklayer.Data},
		{Off: 45056, Len: 4096, Kind: disklayer.Absent},
		{Off: 49152, Len: 4096, Kind: disklayer.Zero},
		{Off: 53248, Len: 12288, Kind: disklayer.Absent},
	}
	if got := extentsOf(t, d.Layer(0), 0, 64<<10); !slices.Equal(got, want) {
		t.Fatalf("top after safe rebase: %v, want %v", got, want)
	}
}

func TestRebaseSafeToStandalone(t *testing.T) {
	_, top, _, _ := rebaseFixture(t)
	before := chainContent(t, top)
	if err := Rebase(top, "", "", false); err != nil {
		t.Fatal(err)
	}
	d := mustOpen(t, top, Options{ReadOnly: true})
	defer d.Close()
	if d.Depth() != 1 {
		t.Fatalf("standalone layer opens as a chain of %d", d.Depth())
	}
	if got := mustRead(t, d, 0, d.Size()); !bytes.Equal(got, before) {
		t.Fatalf("standalone layer reads differently at %d", firstDifference(got, before))
	}
}

func TestRebaseUnsafeOnlyRewritesReference(t *testing.T) {
	_, top, _, newBase := rebaseFixture(t)
	if err := Rebase(top, newBase, "raw", true); err != nil {
		t.Fatal(err)
	}
	// The view is now the top's own sector 2 over the new base.
	want, err := os.ReadFile(newBase)
	if err != nil {
		t.Fatal(err)
	}
	copy(want[8192:], fill(4096, 0xcc))
	if got := chainContent(t, top); !bytes.Equal(got, want) {
		t.Fatalf("view after unsafe rebase differs from top-over-new-base at %d", firstDifference(got, want))
	}
}

func TestRebaseUnsafeRepairsMissingParent(t *testing.T) {
	dir, top, oldBase, _ := rebaseFixture(t)
	moved := filepath.Join(dir, "moved.db")
	if err := os.Rename(oldBase, moved); err != nil {
		t.Fatal(err)
	}
	if err := Rebase(top, moved, "", false); !errors.Is(err, disklayer.ErrParentMismatch) {
		t.Fatalf("safe rebase with a missing old parent: %v, want ErrParentMismatch", err)
	}
	if err := Rebase(top, moved, "", true); err != nil {
		t.Fatal(err)
	}
	d := mustOpen(t, top, Options{})
	mustClose(t, d)
}

func TestCompare(t *testing.T) {
	dir := testDir(t)
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.db")
	writeRaw(t, a, 1<<20, map[int64][]byte{0: fill(4096, 1), 300000: []byte("same")})
	mustCreate(t, b, CreateOptions{Backing: a, BackingFormat: "raw"})

	compare := func(x, y string) CompareResult {
		t.Helper()
		dx, err := OpenImage(x)
		if err != nil {
			t.Fatal(err)
		}
		defer dx.Close()
		dy, err := OpenImage(y)
		if err != nil {
			t.Fatal(err)
		}
		defer dy.Close()
		res, err := Compare(dx, dy)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := compare(a, b); !res.Equal || res.FirstDiff != -1 || res.SizeDiffers {
		t.Fatalf("a chain over a raw image vs the image: %+v, want equal", res)
	}
	d := mustOpen(t, b, Options{})
	mustWrite(t, d, []byte{0, 0, 9}, 700001) // first differing byte: 700003
	mustWrite(t, d, []byte{0}, 800000)       // zero over zero: still equal there
	mustClose(t, d)
	if res := compare(a, b); res.Equal || res.FirstDiff != 700003 {
		t.Fatalf("compare: %+v, want first difference at 700003", res)
	}
	if res := compare(b, a); res.FirstDiff != 700003 {
		t.Fatalf("compare reversed: %+v, want first difference at 700003", res)
	}

	// Sizes differ: equal while the extra part is zero.
	big := filepath.Join(dir, "big.db")
	mustCreate(t, big, CreateOptions{Backing: a, BackingFormat: "raw", Size: 2 << 20})
	if res := compare(a, big); !res.Equal || !res.SizeDiffers || res.SizeA != 1<<20 || res.SizeB != 2<<20 {
		t.Fatalf("zero-extended image: %+v, want equal with sizes differing", res)
	}
	d = mustOpen(t, big, Options{})
	mustWrite(t, d, []byte{5}, 1<<20+12345)
	mustClose(t, d)
	if res := compare(big, a); res.Equal || res.FirstDiff != 1<<20+12345 || !res.SizeDiffers {
		t.Fatalf("extra part with data: %+v, want first difference at %d", res, 1<<20+12345)
	}
}

func TestResize(t *testing.T) {
	dir := testDir(t)
	base, top := filepath.Join(dir, "base.db"), filepath.Join(dir, "top.db")
	mustCreate(t, base, CreateOptions{Size: 16384})
	b := mustOpen(t, base, Options{})
	mustWrite(t, b, fill(16384, 4), 0)
	mustClose(t, b)
	mustCreate(t, top, CreateOptions{Backing: base})

	err := Resize(top, 8192, ResizeOptions{})
	if !errors.Is(err, disklayer.ErrInvalid) || !strings.Contains(err.Error(), "shrink") {
		t.Fatalf("shrinking without Shrink: %v, want ErrInvalid", err)
	}
	if err := Resize(top, 8192, ResizeOptions{Shrink: true}); err != nil {
		t.Fatal(err)
	}
	if got := chainContent(t, top); !bytes.Equal(got, fill(8192, 4)) {
		t.Fatalf("shrunk diff layer reads %d bytes, want the parent's first 8192", len(got))
	}
	// Growing back must not let the parent's hidden data reappear.
	if err := Resize(top, 32768, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	want := slices.Concat(fill(8192, 4), make([]byte, 24576))
	if got := chainContent(t, top); !bytes.Equal(got, want) {
		t.Fatalf("grown diff layer differs at %d", firstDifference(got, want))
	}
}

func TestReadCacheOverFiles(t *testing.T) {
	dir := testDir(t)
	top := chainFiles(t, dir, 64<<10, 4096, true)
	raw, err := rawlayer.Open(filepath.Join(dir, "base.img"), false)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, raw, fill(64<<10, 0x5a), 0)
	mustClose(t, raw)
	// Writing the base changed its digest: re-record it, as a user would
	// after knowingly updating a base.
	if err := Rebase(filepath.Join(dir, "mid.db"), filepath.Join(dir, "base.img"), "raw", true); err != nil {
		t.Fatal(err)
	}
	if err := Rebase(top, filepath.Join(dir, "mid.db"), "", true); err != nil {
		t.Fatal(err)
	}
	d := mustOpen(t, top, Options{ReadCache: true})
	mustWrite(t, d, fill(4096, 0x01), 8192)
	got := mustRead(t, d, 100, 16000)
	want := slices.Concat(fill(8092, 0x5a), fill(4096, 0x01), fill(16000-8092-4096, 0x5a))
	if !bytes.Equal(got, want) {
		t.Fatalf("read-cache read differs at %d", firstDifference(got, want))
	}
	mustClose(t, d)
	// The top now holds sectors 0-3 itself: 0, 1 and 3 from the cache,
	// 2 from the write, which the cache did not overwrite.
	d = mustOpen(t, top, Options{ReadOnly: true})
	defer d.Close()
	wantTop := []disklayer.Extent{{Off: 0, Len: 16384, Kind: disklayer.Data}, {Off: 16384, Len: 49152, Kind: disklayer.Absent}}
	if got := extentsOf(t, d.Layer(0), 0, 64<<10); !slices.Equal(got, wantTop) {
		t.Fatalf("top after cached reads: %v, want %v", got, wantTop)
	}
	if got := mustRead(t, d.Layer(0), 8192, 4096); !bytes.Equal(got, fill(4096, 0x01)) {
		t.Fatal("the cache fill overwrote the top's own write")
	}
}

// TestCommitGivesSpaceBack: the layer commit empties shrinks back to an
// empty layer's size (the rows' pages are not kept on SQLite's free
// list), into a hibdisk parent and into a raw one.
func TestCommitGivesSpaceBack(t *testing.T) {
	for _, raw := range []bool{false, true} {
		dir := testDir(t)
		base, top := filepath.Join(dir, "base.db"), filepath.Join(dir, "top.db")
		var createBase CreateOptions
		if raw {
			base = filepath.Join(dir, "base.raw")
			if err := os.WriteFile(base, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(base, 32<<20); err != nil {
				t.Fatal(err)
			}
			mustCreate(t, top, CreateOptions{Backing: base, BackingFormat: disklayer.FormatRaw})
		} else {
			createBase.Size = 32 << 20
			mustCreate(t, base, createBase)
			mustCreate(t, top, CreateOptions{Backing: base})
		}
		d := mustOpen(t, top, Options{})
		want := fill(16<<20, 9)
		mustWrite(t, d, want, 4096)
		mustClose(t, d)
		if st, err := os.Stat(top); err != nil || st.Size() < 16<<20 {
			t.Fatalf("top holds %v bytes before the commit (%v)", st.Size(), err)
		}
		if err := Commit(top, CommitOptions{}); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(top)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1<<20 {
			t.Errorf("raw=%v: the emptied top is %d bytes after commit, want under 1 MiB", raw, st.Size())
		}
		if got := chainContent(t, top); !bytes.Equal(got[4096:4096+len(want)], want) {
			t.Errorf("raw=%v: the chain reads differently after commit", raw)
		}
	}
}
