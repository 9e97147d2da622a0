package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/s3test"
)

// rawImages writes r0.img, r1.img and r2.img (size bytes) into dir: r0
// random data in its first half, r1 r0 with other data over some ranges,
// r2 r1 likewise: the disks of a 3-layer chain, each layer's changes
// written by the CLI (convert, convert -n).
func rawImages(t *testing.T, dir string, size int, seed uint64) [][]byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	r0 := make([]byte, size)
	copy(r0, random(size/2))
	r1 := bytes.Clone(r0)
	copy(r1[size/2+12345:], random(300<<10))
	copy(r1[4096:], make([]byte, 64<<10)) // zeros over the base's data
	r2 := bytes.Clone(r1)
	copy(r2[size-(200<<10):], random(100<<10))
	copy(r2[1<<20:], random(5000))
	disks := [][]byte{r0, r1, r2}
	for i, b := range disks {
		if err := os.WriteFile(filepath.Join(dir, "r"+string(rune('0'+i))+".img"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return disks
}

// cliChain makes bases/base.db <- mid.db <- top.db in dir with the CLI,
// the disks of rawImages, and returns the disks.
func cliChain(t *testing.T, dir string, seed uint64) [][]byte {
	t.Helper()
	disks := rawImages(t, dir, 8<<20, seed)
	if err := os.Mkdir(filepath.Join(dir, "bases"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "convert", "r0.img", "bases/base.db")
	mustHib(t, dir, "create", "-q", "-b", "bases/base.db", "mid.db")
	mustHib(t, dir, "convert", "-n", "r1.img", "mid.db")
	mustHib(t, dir, "create", "-q", "-b", "mid.db", "top.db")
	mustHib(t, dir, "convert", "-n", "r2.img", "top.db")
	return disks
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// blobTimes maps each blob file of the store to its modification time.
func blobTimes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	times := map[string]int64{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		times[e.Name()] = info.ModTime().UnixNano()
	}
	return times
}

// TestPushPullCLI: a 3-layer chain made and written with the CLI is
// pushed, pushed again (no blob uploaded: the store's files are
// untouched), listed, pulled elsewhere, and compares equal, byte for
// byte as a raw image too; the pulled chain is sealed and takes a diff
// layer.
func TestPushPullCLI(t *testing.T) {
	srv := s3test.Start(t, "golden")
	dir := testDir(t)
	disks := cliChain(t, dir, 1)
	url := "s3://golden/ci/debian:v1"

	var first pushJSON
	out := mustHib(t, dir, "push", "--endpoint", srv.Endpoint, "--json", "top.db", url)
	if err := json.Unmarshal([]byte(out), &first); err != nil {
		t.Fatalf("push --json: %v: %s", err, out)
	}
	if len(first.Layers) != 3 || first.URL != url || !regexp.MustCompile(`^sha256:[0-9a-f]{64}$`).MatchString(first.Manifest) {
		t.Fatalf("push --json: %s", out)
	}
	for i, name := range []string{"bases/base.db", "mid.db", "top.db"} {
		l := first.Layers[i]
		if l.Filename != name || !l.Uploaded || !l.Sealed || l.Digest != sha256File(t, filepath.Join(dir, name)) {
			t.Errorf("layer %d: %+v; want %s uploaded with its file's digest", i, l, name)
		}
	}
	blobs := filepath.Join(srv.Dir, "golden", "ci", "debian", "blobs", "sha256")
	before := blobTimes(t, blobs)
	if len(before) != 7 {
		t.Errorf("%d blobs in the store, want 7 (3 layers, their page digests, the manifest)", len(before))
	}

	out = mustHib(t, dir, "push", "--endpoint", srv.Endpoint, "top.db", url)
	if strings.Count(out, "already there") != 3 || strings.Contains(out, "uploaded") || !strings.Contains(out, url+" -> "+first.Manifest) {
		t.Errorf("second push says:\n%s", out)
	}
	if after := blobTimes(t, blobs); !equalTimes(before, after) {
		t.Errorf("the second push touched the store's blobs: %v -> %v", before, after)
	}

	out = mustHib(t, dir, "ls-remote", "--endpoint", srv.Endpoint, "s3://golden/ci/debian")
	if !strings.HasPrefix(out, "v1  "+first.Manifest+"  3 layers") {
		t.Errorf("ls-remote says %q", out)
	}
	// The endpoint from the SDK's environment, as CI systems set it.
	t.Setenv("AWS_ENDPOINT_URL_S3", srv.Endpoint)
	var tags []lsRemoteJSON
	out = mustHib(t, dir, "ls-remote", "--output=json", "s3://golden/ci/debian")
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	if err := json.Unmarshal([]byte(out), &tags); err != nil || len(tags) != 1 || tags[0].Tag != "v1" || tags[0].Manifest != first.Manifest || tags[0].Layers != 3 || tags[0].DiskSize != 8<<20 {
		t.Errorf("ls-remote --output=json: %s (%v)", out, err)
	}

	pulled := filepath.Join(t.TempDir(), "pulled")
	out = mustHib(t, dir, "pull", "--endpoint", srv.Endpoint, url, pulled)
	if strings.Count(out, "downloaded") != 3 || !strings.Contains(out, "top: "+filepath.Join(pulled, "top.db")) {
		t.Errorf("pull says:\n%s", out)
	}
	for i, name := range []string{"bases/base.db", "mid.db", "top.db"} {
		if got := sha256File(t, filepath.Join(pulled, name)); got != first.Layers[i].Digest {
			t.Errorf("pulled %s has %s, pushed %s", name, got, first.Layers[i].Digest)
		}
	}
	ptop := filepath.Join(pulled, "top.db")
	if out := mustHib(t, dir, "compare", "top.db", ptop); !strings.Contains(out, "Images are identical.") {
		t.Errorf("compare says %q", out)
	}
	mustHib(t, dir, "convert", "-O", "raw", ptop, "pulled.img")
	if b, err := os.ReadFile(filepath.Join(dir, "pulled.img")); err != nil || !bytes.Equal(b, disks[2]) {
		t.Errorf("the pulled chain's disk differs from the one written (%v)", err)
	}
	if out := mustHib(t, dir, "info", ptop); !strings.Contains(out, "sealed: yes") || !strings.Contains(out, "backing file digest: "+first.Layers[1].Digest) {
		t.Errorf("info of the pulled top:\n%s", out)
	}
	mustHib(t, dir, "create", "-q", "-b", ptop, "job.db")
	mustHib(t, dir, "convert", "-n", "r0.img", "job.db")
	if out := mustHib(t, dir, "compare", "job.db", "r0.img"); !strings.Contains(out, "identical") {
		t.Errorf("a job layer over the pulled chain: compare says %q", out)
	}
}

func equalTimes(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRemoteErrorsCLI: every failure is one line on stderr that says
// what to do; JSON errors with --json.
func TestRemoteErrorsCLI(t *testing.T) {
	srv := s3test.Start(t, "golden")
	dir := testDir(t)
	cliChain(t, dir, 2)
	e := srv.Endpoint
	mustHib(t, dir, "push", "--endpoint", e, "top.db", "s3://golden/p")
	var pushed pushJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "push", "--endpoint", e, "--json", "top.db", "s3://golden/p:latest")), &pushed); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "create", "-q", "-s", "1M", "golden.db")
	os.Mkdir(filepath.Join(dir, "jobs"), 0o755)
	mustHib(t, dir, "create", "-q", "-b", "golden.db", "jobs/job.db")
	if err := os.WriteFile(filepath.Join(dir, "raw.img"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "create", "-q", "-b", "raw.img", "-F", "raw", "overraw.db")

	cases := []struct {
		args []string
		code int
		says []string
	}{
		{[]string{"pull", "--endpoint", e, "s3://golden/p:v9", "out"}, 1, []string{`no tag "v9"`, "hibdisk ls-remote s3://golden/p"}},
		{[]string{"pull", "--endpoint", e, "s3://nobucket/p:v1", "out"}, 1, []string{`bucket "nobucket" does not exist`, "create it"}},
		{[]string{"pull", "--endpoint", e, "s3:///p:v1", "out"}, 2, []string{"no bucket"}},
		{[]string{"push", "--endpoint", e, "overraw.db", "s3://golden/p:raw"}, 1, []string{"raw parent", "hibdisk convert", "rebase -u"}},
		{[]string{"push", "--endpoint", e, "jobs/job.db", "s3://golden/p:out"}, 1, []string{"../golden.db", "rebase -u -b NEWPATH"}},
		{[]string{"push", "--endpoint", e, "top.db", "s3://golden/p@" + pushed.Manifest}, 2, []string{"not a digest"}},
		{[]string{"ls-remote", "--endpoint", e, "s3://golden/p:latest"}, 2, []string{"leave out"}},
	}
	for _, c := range cases {
		r := hib(t, dir, c.args...)
		if r.code != c.code || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want %d and one line", strings.Join(c.args, " "), r.code, r.stderr, c.code)
		}
		for _, s := range c.says {
			if !strings.Contains(r.stderr, s) {
				t.Errorf("hibdisk %s: stderr %q does not say %q", strings.Join(c.args, " "), r.stderr, s)
			}
		}
	}
	// A blob missing from the store.
	blob := filepath.Join(srv.Dir, "golden", "p", "blobs", "sha256", strings.TrimPrefix(pushed.Layers[1].Digest, "sha256:"))
	if err := os.Remove(blob); err != nil {
		t.Fatal(err)
	}
	r := hib(t, dir, "pull", "--endpoint", e, "s3://golden/p", "out")
	if r.code != 1 || !strings.Contains(r.stderr, "blob "+pushed.Layers[1].Digest+" not in s3://golden/p") || !strings.Contains(r.stderr, "push the layer again") {
		t.Errorf("pull with a blob missing: exit %d, %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "out", "mid.db")); !os.IsNotExist(err) {
		t.Errorf("pull with a blob missing left its layer: %v", err)
	}
	// --json: the error is one JSON object.
	r = hib(t, dir, "pull", "--json", "--endpoint", e, "s3://golden/p:v9", "out")
	var je map[string]any
	if r.code != 1 || json.Unmarshal([]byte(r.stderr), &je) != nil {
		t.Errorf("pull --json of a missing tag: exit %d, stderr %q; want a JSON object", r.code, r.stderr)
	}
	// No credentials.
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	r = hib(t, dir, "ls-remote", "--endpoint", e, "s3://golden/p")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "hibdisk ls-remote: no AWS credentials for s3://golden/p: set AWS_ACCESS_KEY_ID") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("ls-remote without credentials: exit %d, %q", r.code, r.stderr)
	}
}

// TestSealCLI: seal prints each layer's digest base first, as sha256sum
// would; sealing again changes nothing; info shows the seal; a sealed
// layer refuses writes with what to do; a layer over it takes them.
func TestSealCLI(t *testing.T) {
	dir := testDir(t)
	cliChain(t, dir, 3)
	out := mustHib(t, dir, "seal", "top.db")
	var want strings.Builder
	for _, name := range []string{"bases/base.db", "mid.db", "top.db"} {
		want.WriteString(sha256File(t, filepath.Join(dir, name)) + "  " + name + "\n")
	}
	if out != want.String() {
		t.Errorf("seal printed\n%s\nwant\n%s", out, want.String())
	}
	before := fileDigest(t, filepath.Join(dir, "top.db"), filepath.Join(dir, "mid.db"), filepath.Join(dir, "bases/base.db"))
	if again := mustHib(t, dir, "seal", "top.db"); again != out {
		t.Errorf("second seal printed\n%s\nfirst\n%s", again, out)
	}
	var js []sealJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "seal", "--json", "mid.db")), &js); err != nil || len(js) != 2 || !js[1].AlreadySealed || js[1].Filename != "mid.db" {
		t.Errorf("seal --json: %+v, %v", js, err)
	}
	if after := fileDigest(t, filepath.Join(dir, "top.db"), filepath.Join(dir, "mid.db"), filepath.Join(dir, "bases/base.db")); after != before {
		t.Error("sealing a sealed chain again changed its files")
	}
	if info := mustHib(t, dir, "info", "top.db"); !strings.Contains(info, "read only: yes") || !strings.Contains(info, "sealed: yes") {
		t.Errorf("info of a sealed layer:\n%s", info)
	}
	for _, args := range [][]string{{"convert", "-n", "r0.img", "top.db"}, {"resize", "top.db", "+1M"}, {"compact", "mid.db"}} {
		r := hib(t, dir, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "is sealed") || !strings.Contains(r.stderr, "create -b") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("hibdisk %s on a sealed layer: exit %d, %q", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	mustHib(t, dir, "create", "-q", "-b", "top.db", "job.db")
	mustHib(t, dir, "convert", "-n", "r0.img", "job.db")
	if r := hib(t, dir, "commit", "job.db"); r.code != 1 || !strings.Contains(r.stderr, "is sealed") {
		t.Errorf("commit into a sealed layer: exit %d, %q", r.code, r.stderr)
	}
	if after := fileDigest(t, filepath.Join(dir, "top.db"), filepath.Join(dir, "mid.db"), filepath.Join(dir, "bases/base.db")); after != before {
		t.Error("refused writes changed the sealed chain")
	}
}
