package remote_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/s3test"
	"github.com/hibdisk/hibdisk/remote"
)

const bucket = "golden"

// server runs versitygw with the test bucket and opens the store of url
// on it.
func server(t testing.TB, url string) (*s3test.Server, *remote.Store) {
	t.Helper()
	srv := s3test.Start(t, bucket)
	return srv, openStore(t, srv, url)
}

func openStore(t testing.TB, srv *s3test.Server, url string) *remote.Store {
	t.Helper()
	u, err := remote.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	s, err := remote.Open(context.Background(), u, remote.Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// makeChain creates bases/base.db <- mid.db <- top.db in dir, each of
// size bytes, writing random data (seeded by seed) through each chain:
// n bytes at 0 into the base, n/8 at size/2 into mid, n/8 at 3/4 size
// into top; it returns the top.
func makeChain(t testing.TB, dir string, size, n int64, seed uint64) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	if err := os.MkdirAll(filepath.Join(dir, "bases"), 0o755); err != nil {
		t.Fatal(err)
	}
	paths := []string{filepath.Join(dir, "bases", "base.db"), filepath.Join(dir, "mid.db"), filepath.Join(dir, "top.db")}
	for i, p := range paths {
		opts := diffdisk.CreateOptions{Size: size}
		if i > 0 {
			opts = diffdisk.CreateOptions{Backing: paths[i-1]}
		}
		if err := diffdisk.Create(p, opts); err != nil {
			t.Fatal(err)
		}
		d, err := diffdisk.Open(p, diffdisk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1<<20)
		off, count := int64(0), n
		if i > 0 {
			off, count = size/4*int64(i+1), n/8
		}
		for done := int64(0); done < count; done += int64(len(buf)) {
			chunk := buf[:min(int64(len(buf)), count-done)]
			for j := range chunk {
				chunk[j] = byte(rng.Uint32())
			}
			if _, err := d.WriteAt(chunk, off+done); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return paths[2]
}

// readAll reads the whole disk of the chain at path.
func readAll(t testing.TB, path string) []byte {
	t.Helper()
	d, err := diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b := make([]byte, d.Size())
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// noPartials fails the test if dir holds a pull's partial file.
func noPartials(t testing.TB, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".partial") {
			t.Errorf("partial file left: %s", p)
		}
		return nil
	})
}

func TestParseURL(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		in   string
		want remote.URL
	}{
		{"s3://b1/ci/debian:v1", remote.URL{Bucket: "b1", Prefix: "ci/debian", Tag: "v1"}},
		{"s3://b1/ci/debian", remote.URL{Bucket: "b1", Prefix: "ci/debian"}},
		{"s3://b1/ci/debian/", remote.URL{Bucket: "b1", Prefix: "ci/debian"}},
		{"s3://b1", remote.URL{Bucket: "b1"}},
		{"s3://b1/:v1", remote.URL{Bucket: "b1", Tag: "v1"}},
		{"s3://b1/p@" + digest, remote.URL{Bucket: "b1", Prefix: "p", Digest: digest}},
	} {
		got, err := remote.ParseURL(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if err == nil && c.in != "s3://b1/ci/debian/" && got.String() != c.in && got.String() != strings.TrimSuffix(c.in, "/") && c.in != "s3://b1/:v1" {
			t.Errorf("%q prints back as %q", c.in, got.String())
		}
	}
	for _, bad := range []string{"", "b1/p", "http://b1/p", "s3://", "s3:///p", "s3://b1/p:", "s3://b1/p:-x", "s3://b1/p:a/b",
		"s3://b1/../p", "s3://b1/a//b", "s3://b1/p@sha256:12", "s3://b1/p:t@" + digest, "s3://x/p"} {
		if u, err := remote.ParseURL(bad); !errors.Is(err, remote.ErrBadURL) {
			t.Errorf("ParseURL(%q) = %+v, %v; want ErrBadURL", bad, u, err)
		}
	}
}

func TestManifestValidate(t *testing.T) {
	good := func() *remote.Manifest {
		return &remote.Manifest{MediaType: remote.ManifestMediaType, SectorSize: 4096, DiskSize: 1 << 20, ChunkSize: remote.MinChunkSize,
			Layers: []remote.ManifestLayer{{Digest: "sha256:" + strings.Repeat("0", 64), Size: remote.MinChunkSize + 1, Path: "a/base.db", UUID: "u", Generation: 1, Chunks: make([]byte, 64)}}}
	}
	b, d, err := good().Encode()
	if err != nil {
		t.Fatal(err)
	}
	if m, err := remote.DecodeManifest(b, d); err != nil || m.Layers[0].Path != "a/base.db" {
		t.Fatalf("round trip: %+v, %v", m, err)
	}
	if _, err := remote.DecodeManifest(append(b, ' '), d); !errors.Is(err, remote.ErrDigestMismatch) {
		t.Errorf("manifest with other bytes: %v", err)
	}
	for name, spoil := range map[string]func(*remote.Manifest){
		"absolute path":  func(m *remote.Manifest) { m.Layers[0].Path = "/etc/base.db" },
		"climbing path":  func(m *remote.Manifest) { m.Layers[0].Path = "../base.db" },
		"unclean path":   func(m *remote.Manifest) { m.Layers[0].Path = "a/../b.db" },
		"chunk count":    func(m *remote.Manifest) { m.Layers[0].Chunks = m.Layers[0].Chunks[:32] },
		"chunk size":     func(m *remote.Manifest) { m.ChunkSize = 100000 },
		"media type":     func(m *remote.Manifest) { m.MediaType = "application/json" },
		"digest":         func(m *remote.Manifest) { m.Layers[0].Digest = "sha256:xyz" },
		"no layers":      func(m *remote.Manifest) { m.Layers = nil },
		"duplicate path": func(m *remote.Manifest) { m.Layers = append(m.Layers, m.Layers[0]) },
	} {
		m := good()
		spoil(m)
		if _, _, err := m.Encode(); !errors.Is(err, remote.ErrBadManifest) {
			t.Errorf("%s: Encode: %v, want ErrBadManifest", name, err)
		}
	}
}

// TestPushPullChain: a 3-layer chain goes up, a second push uploads
// nothing, and a pull elsewhere reads the same disk from byte-identical
// layers; a pull over a complete pull downloads nothing.
func TestPushPullChain(t *testing.T) {
	srv, s := server(t, "s3://golden/ci/debian")
	ctx := context.Background()
	top := makeChain(t, t.TempDir(), 8<<20, 1<<20, 1)
	res, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.BlobsUploaded != 7 || st.BlobsPresent != 0 {
		t.Errorf("first push: %+v, want 7 blobs uploaded (3 layers, their page digests, the manifest)", st)
	}
	for i, want := range []string{"base.db", "mid.db", "top.db"} {
		if l := res.Layers[i]; filepath.Base(l.Path) != want || !l.Uploaded || !l.Sealed {
			t.Errorf("layer %d: %+v", i, l)
		}
	}
	again := openStore(t, srv, "s3://golden/ci/debian")
	res2, err := remote.Push(ctx, again, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := again.Stats(); st.BlobsUploaded != 0 || st.BlobsPresent != 7 {
		t.Errorf("second push: %+v, want nothing uploaded, 7 blobs present", st)
	}
	if res2.Manifest != res.Manifest || res2.Previous != res.Manifest {
		t.Errorf("second push: manifest %s (previous %s), first %s", res2.Manifest, res2.Previous, res.Manifest)
	}

	dir := filepath.Join(t.TempDir(), "pulled")
	u, _ := remote.ParseURL("s3://golden/ci/debian:v1")
	pulled, err := remote.Pull(ctx, s, u, dir)
	if err != nil {
		t.Fatal(err)
	}
	if pulled.Top != filepath.Join(dir, "top.db") || pulled.Layers[0].Path != filepath.Join(dir, "bases", "base.db") {
		t.Errorf("pulled %+v", pulled)
	}
	for i, l := range pulled.Layers {
		d, _, err := remote.FileDigestForTest(l.Path)
		if err != nil || d != res.Layers[i].Digest || !l.Downloaded {
			t.Errorf("pulled layer %d: %+v: digest %s, %v; pushed %s", i, l, d, err, res.Layers[i].Digest)
		}
	}
	if !bytes.Equal(readAll(t, top), readAll(t, pulled.Top)) {
		t.Error("the pulled chain reads other data than the pushed one")
	}
	noPartials(t, dir)
	// By pinned digest, into the same directory: everything is there.
	pinned := u
	pinned.Tag, pinned.Digest = "", res.Manifest
	again2, err := remote.Pull(ctx, s, pinned, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range again2.Layers {
		if l.Downloaded {
			t.Errorf("second pull downloaded %s", l.Path)
		}
	}
	tags, err := remote.List(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) != 1 || tags[0].Tag != "v1" || tags[0].Manifest != res.Manifest || tags[0].Layers != 3 || tags[0].DiskSize != 8<<20 {
		t.Errorf("List = %+v", tags)
	}
}

// TestPullRefusesTamperedBlob: a layer overwritten in the bucket (same
// key, same size, other bytes) is refused at its first bad chunk,
// naming the blob, and leaves no file.
func TestPullRefusesTamperedBlob(t *testing.T) {
	srv, s := server(t, "s3://golden/p")
	ctx := context.Background()
	top := makeChain(t, t.TempDir(), 8<<20, 2<<20, 2)
	res, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mid := res.Layers[1].Digest
	obj := srv.ObjectPath(bucket, s.BlobKey(mid))
	f, err := os.OpenFile(obj, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("tampered"), res.Layers[1].Size/2); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dir := t.TempDir()
	u, _ := remote.ParseURL("s3://golden/p:v1")
	_, err = remote.Pull(ctx, s, u, dir)
	if !errors.Is(err, remote.ErrDigestMismatch) || !strings.Contains(err.Error(), mid) || !strings.Contains(err.Error(), "chunk") {
		t.Fatalf("pull of a tampered blob: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "mid.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the tampered layer is at its place: %v", err)
	}
	noPartials(t, dir)

	// Truncated in the bucket: the size is refused before a byte is kept.
	if err := os.Truncate(obj, res.Layers[1].Size-1); err != nil {
		t.Fatal(err)
	}
	if _, err = remote.Pull(ctx, s, u, dir); !errors.Is(err, remote.ErrDigestMismatch) || !strings.Contains(err.Error(), mid) {
		t.Fatalf("pull of a truncated blob: %v", err)
	}
	noPartials(t, dir)
	// Removed from the bucket: one clear error.
	if err := os.Remove(obj); err != nil {
		t.Fatal(err)
	}
	if _, err = remote.Pull(ctx, s, u, dir); !errors.Is(err, remote.ErrMissingBlob) || !strings.Contains(err.Error(), mid) {
		t.Fatalf("pull of a missing blob: %v", err)
	}
	noPartials(t, dir)
	u.Tag = "v2"
	if _, err = remote.Pull(ctx, s, u, dir); !errors.Is(err, remote.ErrNoTag) || !strings.Contains(err.Error(), `"v2"`) {
		t.Fatalf("pull of a missing tag: %v", err)
	}
}

// TestPullRefusesFileInTheWay: a file with other bytes where a layer
// goes is not overwritten.
func TestPullRefusesFileInTheWay(t *testing.T) {
	_, s := server(t, "s3://golden/p")
	ctx := context.Background()
	top := makeChain(t, t.TempDir(), 4<<20, 256<<10, 3)
	if _, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "top.db"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	u, _ := remote.ParseURL("s3://golden/p:v1")
	if _, err := remote.Pull(ctx, s, u, dir); !errors.Is(err, remote.ErrExists) {
		t.Fatalf("pull over another file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "top.db")); string(b) != "mine" {
		t.Error("pull overwrote a file in the way")
	}
}

// TestInterruptedPushLeavesNoTag: a push cut short after its first blob,
// or before its tag, leaves no tag; the next push completes.
func TestInterruptedPushLeavesNoTag(t *testing.T) {
	srv, s := server(t, "s3://golden/p")
	top := makeChain(t, t.TempDir(), 8<<20, 1<<20, 4)
	for _, at := range []string{"blob", "tag"} {
		ctx, cancel := context.WithCancel(context.Background())
		remote.SetHook(s, func(e string) {
			if e == at {
				cancel()
			}
		})
		_, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{})
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("push cancelled at %q: %v", at, err)
		}
		if _, err := s.Tag(context.Background(), "v1"); !errors.Is(err, remote.ErrNoTag) {
			t.Errorf("after a push cancelled at %q: tag: %v, want ErrNoTag", at, err)
		}
	}
	s2 := openStore(t, srv, "s3://golden/p")
	res, err := remote.Push(context.Background(), s2, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ref, err := s2.Tag(context.Background(), "v1"); err != nil || ref.Manifest != res.Manifest {
		t.Errorf("after the full push: tag %+v, %v; manifest %s", ref, err, res.Manifest)
	}
}

// TestMultipartPush: a layer above the multipart threshold goes up in
// parts; cut short after its first part, it leaves no blob, no upload in
// progress and no tag; pushed in full, it pulls back identical.
func TestMultipartPush(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 72 MiB layer")
	}
	srv, s := server(t, "s3://golden/big")
	top := makeChain(t, t.TempDir(), 128<<20, 70<<20, 5)
	ctx, cancel := context.WithCancel(context.Background())
	remote.SetHook(s, func(e string) {
		if e == "part" {
			cancel()
		}
	})
	_, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("push cancelled after a part: %v", err)
	}
	bg := context.Background()
	base, _, err := remote.FileDigestForTest(filepath.Join(filepath.Dir(top), "bases", "base.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.StatBlob(bg, base); !errors.Is(err, remote.ErrMissingBlob) {
		t.Errorf("the interrupted blob: %v, want ErrMissingBlob", err)
	}
	if n, err := remote.MultipartUploads(bg, s); err != nil || n != 0 {
		t.Errorf("multipart uploads left: %d, %v", n, err)
	}
	if _, err := s.Tag(bg, "v1"); !errors.Is(err, remote.ErrNoTag) {
		t.Errorf("tag after the interrupted push: %v", err)
	}
	s2 := openStore(t, srv, "s3://golden/big")
	res, err := remote.Push(bg, s2, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Layers[0].Size <= remote.MultipartThreshold {
		t.Fatalf("base is %d bytes: not above the multipart threshold", res.Layers[0].Size)
	}
	dir := t.TempDir()
	u, _ := remote.ParseURL("s3://golden/big:v1")
	pulled, err := remote.Pull(bg, s2, u, dir)
	if err != nil {
		t.Fatal(err)
	}
	if d, _, _ := remote.FileDigestForTest(pulled.Layers[0].Path); d != res.Layers[0].Digest {
		t.Errorf("pulled base has digest %s, pushed %s", d, res.Layers[0].Digest)
	}
}

// TestConcurrentTagUpdates: two pushes of different chains race on one
// tag, both having read it before either swaps it: exactly one wins, the
// other fails with the clear error naming the winner's manifest. Both
// for a new tag (If-None-Match) and an existing one (If-Match).
func TestConcurrentTagUpdates(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	tops := []string{makeChain(t, t.TempDir(), 4<<20, 256<<10, 6), makeChain(t, t.TempDir(), 4<<20, 256<<10, 7)}
	first := makeChain(t, t.TempDir(), 4<<20, 256<<10, 8)
	for _, existing := range []bool{false, true} {
		tag := "new"
		if existing {
			tag = "old"
			if _, err := remote.Push(ctx, openStore(t, srv, "s3://golden/race"), first, tag, remote.PushOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		var barrier sync.WaitGroup
		barrier.Add(2)
		results := make([]remote.PushResult, 2)
		errs := make([]error, 2)
		var done sync.WaitGroup
		for i := range 2 {
			s := openStore(t, srv, "s3://golden/race")
			remote.SetHook(s, func(e string) {
				if e == "tag" {
					barrier.Done()
					barrier.Wait()
				}
			})
			done.Add(1)
			go func() {
				defer done.Done()
				results[i], errs[i] = remote.Push(ctx, s, tops[i], tag, remote.PushOptions{})
			}()
		}
		done.Wait()
		won := -1
		for i, err := range errs {
			if err == nil {
				if won >= 0 {
					t.Fatalf("tag %s: both pushes won", tag)
				}
				won = i
			}
		}
		if won < 0 {
			t.Fatalf("tag %s: no push won: %v; %v", tag, errs[0], errs[1])
		}
		lost := errs[1-won]
		var moved *remote.TagMovedError
		if !errors.As(lost, &moved) || moved.Now != results[won].Manifest || !strings.Contains(lost.Error(), "tag "+tag+" was moved by another push") {
			t.Errorf("tag %s: the losing push: %v", tag, lost)
		}
		ref, err := openStore(t, srv, "s3://golden/race").Tag(ctx, tag)
		if err != nil || ref.Manifest != results[won].Manifest {
			t.Errorf("tag %s names %+v (%v), the winner pushed %s", tag, ref, err, results[won].Manifest)
		}
	}
}

// TestPushRefusesUnpushableChains: a raw parent, a parent path outside
// the top's directory; nothing is sealed or uploaded.
func TestPushRefusesUnpushableChains(t *testing.T) {
	_, s := server(t, "s3://golden/p")
	ctx := context.Background()
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.img")
	if err := os.WriteFile(raw, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(dir, "child.db")
	if err := diffdisk.Create(child, diffdisk.CreateOptions{Backing: raw, BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	_, err := remote.Push(ctx, s, child, "v1", remote.PushOptions{})
	if !errors.Is(err, remote.ErrNotPushable) || !strings.Contains(err.Error(), "hibdisk convert") || !strings.Contains(err.Error(), "rebase -u") {
		t.Errorf("push over a raw base: %v", err)
	}
	sub := filepath.Join(dir, "jobs")
	os.Mkdir(sub, 0o755)
	base := filepath.Join(dir, "golden.db")
	if err := diffdisk.Create(base, diffdisk.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	job := filepath.Join(sub, "job.db")
	if err := diffdisk.Create(job, diffdisk.CreateOptions{Backing: base}); err != nil {
		t.Fatal(err)
	}
	_, err = remote.Push(ctx, s, job, "v1", remote.PushOptions{})
	if !errors.Is(err, remote.ErrNotPushable) || !strings.Contains(err.Error(), "../golden.db") || !strings.Contains(err.Error(), "rebase -u") {
		t.Errorf("push with a parent outside: %v", err)
	}
	if st := s.Stats(); st.BlobsUploaded != 0 {
		t.Errorf("refused pushes uploaded %d blobs", st.BlobsUploaded)
	}
	d, err := diffdisk.Open(job, diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := d.Layers()
	d.Close()
	if layers[0].Sealed || layers[1].Sealed {
		t.Error("a refused push sealed layers")
	}
}

// TestOpenErrors: a missing bucket, no credentials.
func TestOpenErrors(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	u, _ := remote.ParseURL("s3://nobucket/p")
	if _, err := remote.Open(ctx, u, remote.Options{Endpoint: srv.Endpoint}); !errors.Is(err, remote.ErrNoBucket) || !strings.Contains(err.Error(), `"nobucket"`) {
		t.Errorf("open of a missing bucket: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	u, _ = remote.ParseURL("s3://golden/p")
	if _, err := remote.Open(ctx, u, remote.Options{Endpoint: srv.Endpoint}); !errors.Is(err, remote.ErrNoCredentials) || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID") {
		t.Errorf("open without credentials: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", s3test.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	if _, err := remote.Open(ctx, u, remote.Options{Endpoint: srv.Endpoint}); !errors.Is(err, remote.ErrAccessDenied) {
		t.Errorf("open with a wrong secret: %v", err)
	}
}

// TestReadBlobAt: ranged reads pinned by ETag; a blob replaced since is
// ErrBlobChanged.
func TestReadBlobAt(t *testing.T) {
	_, s := server(t, "s3://golden/p")
	ctx := context.Background()
	top := makeChain(t, t.TempDir(), 4<<20, 256<<10, 9)
	res, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(ctx, res.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	l := m.Top()
	info, err := s.StatBlob(ctx, l.Digest)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(top)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 5000)
	if _, err := s.ReadBlobAt(ctx, l.Digest, info.ETag, p, 70000); err != nil || !bytes.Equal(p, want[70000:75000]) {
		t.Fatalf("ReadBlobAt: %v", err)
	}
	// Replaced through the S3 API (a new ETag), same key.
	if err := remote.ReplaceObjectForTest(ctx, s, s.BlobKey(l.Digest), []byte("other bytes")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadBlobAt(ctx, l.Digest, info.ETag, p, 0); !errors.Is(err, remote.ErrBlobChanged) {
		t.Errorf("ReadBlobAt of a replaced blob: %v, want ErrBlobChanged", err)
	}
}

// TestUploadsAreSignedWithTheirDigest: a blob's upload is signed with
// its digest (a part's with the part's SHA-256) and the server checks
// the body against it: bytes other than those digested are refused and
// nothing is stored under the digest.
func TestUploadsAreSignedWithTheirDigest(t *testing.T) {
	_, s := server(t, "s3://golden/p")
	ctx := context.Background()
	body := []byte("the bytes that were digested")
	sum := sha256.Sum256(body)
	d := "sha256:" + hex.EncodeToString(sum[:])
	other := append([]byte(nil), body...)
	other[0] ^= 1
	if _, err := remote.PutBlobForTest(ctx, s, d, other, nil); err == nil || !strings.Contains(err.Error(), "Sha256Mismatch") && !strings.Contains(err.Error(), "SHA256Mismatch") {
		t.Fatalf("an upload of other bytes than its digest's: %v, want the server's SHA-256 mismatch", err)
	}
	if _, err := s.StatBlob(ctx, d); !errors.Is(err, remote.ErrMissingBlob) {
		t.Errorf("after the refused upload: %v, want ErrMissingBlob", err)
	}
	if up, err := remote.PutBlobForTest(ctx, s, d, body, nil); err != nil || !up {
		t.Fatalf("upload of the right bytes: %v, %v", up, err)
	}
	if testing.Short() {
		return
	}
	big := make([]byte, remote.MultipartThreshold+1)
	for i := range big {
		big[i] = byte(i * 31)
	}
	p1, p2 := sha256.Sum256(big[:remote.PartSize]), sha256.Sum256(big[remote.PartSize:])
	whole := sha256.Sum256(big)
	bd := "sha256:" + hex.EncodeToString(whole[:])
	parts := []string{hex.EncodeToString(p1[:]), hex.EncodeToString(p2[:])}
	big[remote.PartSize] ^= 1 // the second part is not what was digested
	if _, err := remote.PutBlobForTest(ctx, s, bd, big, parts); err == nil || !strings.Contains(err.Error(), "Sha256Mismatch") && !strings.Contains(err.Error(), "SHA256Mismatch") {
		t.Fatalf("a multipart upload of other bytes than its parts' digests: %v, want the server's SHA-256 mismatch", err)
	}
	if _, err := s.StatBlob(ctx, bd); !errors.Is(err, remote.ErrMissingBlob) {
		t.Errorf("after the refused multipart upload: %v, want ErrMissingBlob", err)
	}
	if n, err := remote.MultipartUploads(ctx, s); err != nil || n != 0 {
		t.Errorf("multipart uploads left: %d, %v", n, err)
	}
}

// TestPullVerifiesTheChain: a manifest whose paths do not match the
// layers' parent references (here base and mid swapped) is refused
// after the download, whose files are each verified but do not make the
// chain the manifest claims.
func TestPullVerifiesTheChain(t *testing.T) {
	_, s := server(t, "s3://golden/p")
	ctx := context.Background()
	top := makeChain(t, t.TempDir(), 4<<20, 256<<10, 11)
	res, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(ctx, res.Manifest)
	if err != nil {
		t.Fatal(err)
	}
	m.Layers[0].Path, m.Layers[1].Path = m.Layers[1].Path, m.Layers[0].Path
	b, d, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.PutBlobForTest(ctx, s, d, b, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTag(ctx, "swapped", d, remote.TagRef{}); err != nil {
		t.Fatal(err)
	}
	u, _ := remote.ParseURL("s3://golden/p:swapped")
	if _, err := remote.Pull(ctx, s, u, t.TempDir()); err == nil || !strings.Contains(err.Error(), "pulled chain") {
		t.Fatalf("pull of a manifest with swapped paths: %v", err)
	}
}
