package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/checktest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// testdata is absolute: commands run in their test's directory.
var testdata = func() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Join(wd, "testdata")
}()

// result is one finished command.
type result struct {
	stdout, stderr string
	code           int
}

// hib runs one command line in-process, in dir.
func hib(t *testing.T, dir string, args ...string) result {
	t.Helper()
	t.Chdir(dir)
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &env{stdout: &out, stderr: &errOut})
	return result{out.String(), errOut.String(), code}
}

// hibTerm is hib with stderr taken for a terminal (progress bars).
func hibTerm(t *testing.T, dir string, args ...string) result {
	t.Helper()
	t.Chdir(dir)
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &env{stdout: &out, stderr: &errOut, isTerminal: true})
	return result{out.String(), errOut.String(), code}
}

// mustHib runs a command that must succeed.
func mustHib(t *testing.T, dir string, args ...string) string {
	t.Helper()
	r := hib(t, dir, args...)
	if r.code != 0 {
		t.Fatalf("hibdisk %s: exit %d, stderr: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// testDir is a scratch directory whose every layer is checked when the
// test ends, the way bbolt's tests check every database they touched: with
// the whole check `hibdisk check` runs (internal/checktest).
func testDir(t *testing.T) string {
	return checktest.TempDir(t)
}

var normalizers = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`), "UUID"},
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`), "TIME"},
	{regexp.MustCompile(`(disk size: |"actual-size": )[^\n,]+`), "${1}N"},
	{regexp.MustCompile(`sha256-sampled:[0-9a-f]+`), "sha256-sampled:DIGEST"},
}

// golden compares got with testdata/name, after replacing what differs
// from run to run (uuids, times, allocated sizes, digests).
func golden(t *testing.T, name, got string) {
	t.Helper()
	for _, n := range normalizers {
		got = n.re.ReplaceAllString(got, n.with)
	}
	path := filepath.Join(testdata, name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", name, diff)
	}
}

// writeChain writes through the chain at path: data at 0 (64 KiB of 0x5a)
// and at 1 MiB + 512 (an unaligned 1000 bytes of 0xa5), zeros over 8 KiB
// at 4 MiB.
func writeChain(t *testing.T, path string) {
	t.Helper()
	d, err := diffdisk.Open(path, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte{0x5a}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte{0xa5}, 1000), 1<<20+512); err != nil {
		t.Fatal(err)
	}
	if err := d.Zero(4<<20, 8<<10); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func fileDigest(t *testing.T, paths ...string) string {
	t.Helper()
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		h.Write([]byte(p))
		h.Write(b)
	}
	return string(h.Sum(nil))
}

// TestChainTranscript drives a small chain through the CLI and compares
// every output with its golden file.
func TestChainTranscript(t *testing.T) {
	dir := testDir(t)
	golden(t, "create-base.txt", mustHib(t, dir, "create", "-s", "8M", "--label", "golden", "base.db"))
	// Data in the base, then a diff layer over it that overwrites some.
	writeChain(t, filepath.Join(dir, "base.db"))
	golden(t, "create-diff.txt", mustHib(t, dir, "create", "-b", "base.db", "job.db"))
	d, err := diffdisk.Open(filepath.Join(dir, "job.db"), diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte{0x11}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	if err := d.Zero(32<<10, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	golden(t, "info.txt", mustHib(t, dir, "info", "job.db"))
	golden(t, "info.json", mustHib(t, dir, "info", "--json", "job.db"))
	golden(t, "info-chain.txt", mustHib(t, dir, "info", "--backing-chain", "job.db"))
	golden(t, "info-chain.json", mustHib(t, dir, "info", "--backing-chain", "--output=json", "job.db"))
	golden(t, "map.txt", mustHib(t, dir, "map", "job.db"))
	golden(t, "map.json", mustHib(t, dir, "map", "--json", "job.db"))
	golden(t, "check.txt", mustHib(t, dir, "check", "job.db"))
	golden(t, "compare-same.txt", mustHib(t, dir, "compare", "job.db", "job.db"))
	r := hib(t, dir, "compare", "base.db", "job.db")
	if r.code != 1 {
		t.Fatalf("compare of different images: exit %d, want 1 (stderr %q)", r.code, r.stderr)
	}
	golden(t, "compare-differ.txt", r.stdout)

	mustHib(t, dir, "convert", "-O", "raw", "job.db", "job.img")
	golden(t, "compare-converted.txt", mustHib(t, dir, "compare", "job.db", "job.img"))
	mustHib(t, dir, "convert", "job.img", "again.db")
	mustHib(t, dir, "compare", "again.db", "job.db")

	golden(t, "commit.txt", mustHib(t, dir, "commit", "job.db"))
	mustHib(t, dir, "compare", "base.db", "job.img")
	mustHib(t, dir, "compare", "job.db", "job.img")
	if got := mustHib(t, dir, "info", "job.db"); !strings.Contains(got, "data sectors: 0 (0 B)\ntombstones: 0") {
		t.Errorf("commit did not empty job.db:\n%s", got)
	}
	if got := mustHib(t, dir, "compact", "base.db"); !strings.HasPrefix(got, "compacted base.db: ") {
		t.Errorf("compact says %q", got)
	}
	mustHib(t, dir, "compare", "base.db", "job.img")
	golden(t, "resize.txt", mustHib(t, dir, "resize", "job.db", "+1M"))
	if got := mustHib(t, dir, "info", "--json", "job.db"); !strings.Contains(got, `"virtual-size": 9437184`) {
		t.Errorf("after resize +1M, info says:\n%s", got)
	}
}

// TestReadOnlyCommandsLeaveFilesIdentical: info, map, check, compare and
// convert's source must not change a byte of the files they read.
func TestReadOnlyCommandsLeaveFilesIdentical(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "8M", "base.db")
	writeChain(t, filepath.Join(dir, "base.db"))
	mustHib(t, dir, "create", "-b", "base.db", "top.db")
	files := []string{"base.db", "base.db-wal", "top.db", "top.db-wal"}
	for i := range files {
		files[i] = filepath.Join(dir, files[i])
	}
	before := fileDigest(t, files...)
	for _, args := range [][]string{
		{"info", "top.db"}, {"info", "--json", "top.db"}, {"map", "top.db"}, {"map", "--json", "top.db"},
		{"check", "top.db"}, {"check", "base.db"}, {"compare", "top.db", "base.db"},
		{"convert", "top.db", "out.db"}, {"convert", "-O", "raw", "top.db", "out.img"},
	} {
		mustHib(t, dir, args...)
		if fileDigest(t, files...) != before {
			t.Fatalf("hibdisk %s changed the files it read", strings.Join(args, " "))
		}
	}
}

// TestBadInput: each bad invocation exits non-zero with exactly one line
// on stderr that says what is wrong, and leaves nothing behind.
func TestBadInput(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	if err := os.WriteFile(filepath.Join(dir, "raw.img"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "junk.bin"), []byte("SQLite format 3\x00 but not really"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string // in the error line
	}{
		{[]string{"nonsense"}, 2, `unknown command "nonsense"`},
		{[]string{"create", "x.db"}, 2, "needs a size"},
		{[]string{"create", "-s", "12Q", "x.db"}, 2, `invalid size "12Q"`},
		{[]string{"create", "-s", "1M", "--sector-size", "1000", "x.db"}, 1, "sector size"},
		{[]string{"create", "-s", "1M", "base.db"}, 1, "exists"},
		{[]string{"create", "-b", "raw.img", "x.db"}, 1, "-F raw"},
		{[]string{"create", "-b", "missing.db", "x.db"}, 1, "missing.db"},
		{[]string{"create", "-b", "base.db", "-s", "512K", "x.db"}, 1, "smaller"},
		{[]string{"info", "missing.db"}, 1, "missing.db"},
		{[]string{"info"}, 2, "want 1 argument"},
		{[]string{"check", "junk.bin"}, 1, "junk.bin"},
		{[]string{"commit", "base.db"}, 1, "base"},
		{[]string{"compact"}, 2, "want 1 argument"},
		{[]string{"compact", "raw.img"}, 1, "raw.img"},
		{[]string{"compare", "base.db", "missing.db"}, 2, "missing.db"},
		{[]string{"convert", "-O", "qed", "base.db", "x.img"}, 2, "qed"},
		{[]string{"convert", "base.db", "raw.img"}, 1, "exists"},
		{[]string{"resize", "base.db", "512K"}, 1, "shrink"},
		{[]string{"rebase", "base.db"}, 2, "-b NEWBASE"},
	} {
		r := hib(t, dir, tc.args...)
		lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
		if r.code != tc.code || len(lines) != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want exit %d and one line containing %q",
				strings.Join(tc.args, " "), r.code, r.stderr, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.db")); !os.IsNotExist(err) {
		t.Errorf("a failed create left x.db behind (stat: %v)", err)
	}
}

// TestChangedRawBaseRefused: a diff layer over a raw base whose content
// changed afterwards is refused, naming both digests.
func TestChangedRawBaseRefused(t *testing.T) {
	dir := testDir(t)
	raw := filepath.Join(dir, "golden.img")
	if err := os.WriteFile(raw, bytes.Repeat([]byte{7}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "create", "-b", "golden.img", "-F", "raw", "job.db")
	mustHib(t, dir, "info", "job.db")
	f, err := os.OpenFile(raw, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{8}, 100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Put the base back before testDir's cleanup checks job.db.
	t.Cleanup(func() {
		if err := os.WriteFile(raw, bytes.Repeat([]byte{7}, 1<<20), 0o644); err != nil {
			t.Error(err)
		}
	})
	r := hib(t, dir, "info", "job.db")
	if r.code != 1 || !strings.Contains(r.stderr, "golden.img") || strings.Count(r.stderr, "sha256-sampled:") != 2 {
		t.Fatalf("info over a changed raw base: exit %d, stderr %q; want a refusal naming both digests", r.code, r.stderr)
	}
	r = hib(t, dir, "check", "job.db")
	if r.code == 0 || !strings.Contains(r.stdout, "digest") {
		t.Errorf("check over a changed raw base: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestConvertSparse is the acceptance check: a 1 GiB raw image
// holding 64 MiB of data converts into a layer under 80 MiB that compare
// finds identical, and back into a raw image that is sparse again.
func TestConvertSparse(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 64 MiB")
	}
	dir := testDir(t)
	src := filepath.Join(dir, "src.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	chunk := make([]byte, 1<<20)
	for i := 0; i < 64; i++ {
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		// Spread the data: 1 MiB every 16 MiB.
		if _, err := f.WriteAt(chunk, int64(i)*(16<<20)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	mustHib(t, dir, "convert", "-p", "src.img", "layer.db")
	var total int64
	for _, p := range []string{"layer.db", "layer.db-wal"} {
		if fi, err := os.Stat(filepath.Join(dir, p)); err == nil {
			total += fi.Size()
		}
	}
	if total >= 80<<20 {
		t.Errorf("layer of 64 MiB data is %d bytes, want < 80 MiB", total)
	}
	t.Logf("1 GiB raw with 64 MiB of data -> layer of %.1f MiB", float64(total)/(1<<20))
	golden(t, "compare-convert.txt", mustHib(t, dir, "compare", "src.img", "layer.db"))
	mustHib(t, dir, "convert", "-O", "raw", "layer.db", "back.img")
	mustHib(t, dir, "compare", "src.img", "back.img")
	if alloc, err := fileSize(filepath.Join(dir, "back.img")); err != nil || alloc > 70<<20 {
		t.Errorf("raw output allocates %d bytes (err %v), want about 64 MiB: holes were not kept", alloc, err)
	}
}

// TestConvertCacheModes: every -t mode qemu-img names writes the same
// image, for each kind of output hibdisk writes itself and for one
// qemu-img writes.
func TestConvertCacheModes(t *testing.T) {
	dir := testDir(t)
	src := filepath.Join(dir, "src.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	chunk := make([]byte, 3<<20+512) // runs that end mid-sector of the layer
	for i := int64(0); i < 8; i++ {
		for j := range chunk {
			chunk[j] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(chunk, i*(7<<20)+4096*i); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	for _, mode := range []string{"writeback", "none", "unsafe", "writethrough", "directsync"} {
		for _, format := range []string{"hibdisk", "raw", "qcow2"} {
			out := "out-" + mode + "." + format
			if format == "qcow2" && mode != "unsafe" && mode != "writeback" {
				continue
			}
			if format == "qcow2" {
				needTool(t, "qemu-img", "qemu-utils")
			}
			mustHib(t, dir, "convert", "-t", mode, "-O", format, "src.img", out)
			mustHib(t, dir, "compare", "src.img", out)
			if format == "hibdisk" {
				mustHib(t, dir, "check", out)
			}
		}
	}
	noPartial(t, dir)
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "1K": 1024, "1k": 1024, "64M": 64 << 20, "1G": 1 << 30, "2T": 2 << 40, "1.5K": 1536, "1GiB": 1 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "abc", "1Q", "99999999999E"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
}
