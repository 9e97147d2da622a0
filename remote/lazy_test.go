package remote_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/s3test"
	"github.com/hibdisk/hibdisk/remote"
	"github.com/hibdisk/hibdisk/remote/chunks"
)

const lazySize, lazyData = 32 << 20, 8 << 20

// lazySetup pushes a 3-layer chain to s3://golden/ci:v1 and gives the
// test its own chunk cache (HIBDISK_CACHE).
func lazySetup(t *testing.T) (srv *s3test.Server, s *remote.Store, top string, res remote.PushResult) {
	t.Helper()
	srv, s = server(t, "s3://golden/ci")
	t.Setenv("HIBDISK_CACHE", t.TempDir())
	top = makeChain(t, t.TempDir(), lazySize, lazyData, 7)
	res, err := remote.Push(context.Background(), s, top, "v1", remote.PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return srv, s, top, res
}

// storeBase returns the one store base of d.
func storeBase(t *testing.T, d *diffdisk.Disk) diffdisk.StoreBase {
	t.Helper()
	b := d.StoreBases()
	if len(b) != 1 {
		t.Fatalf("%d store bases, want 1", len(b))
	}
	return b[0]
}

// TestLazyChild: a diff layer over s3://golden/ci:v1 records the pinned
// manifest and the top layer's identity, reads the pushed chain's disk
// with its own writes on top, keeps reading the same manifest after the
// tag moves, and a second open reads everything from the machine's
// cache with no GET.
func TestLazyChild(t *testing.T) {
	srv, s, top, res := lazySetup(t)
	want := readAll(t, top)
	job := filepath.Join(t.TempDir(), "job.db")
	if err := diffdisk.Create(job, diffdisk.CreateOptions{Backing: "s3://golden/ci:v1", Endpoint: srv.Endpoint}); err != nil {
		t.Fatal(err)
	}
	info, err := diffdisk.TopLayer(job)
	if err != nil {
		t.Fatal(err)
	}
	p := info.Parent
	topLayer := res.Layers[len(res.Layers)-1]
	if p == nil || p.Format != disklayer.FormatS3 || p.Path != "s3://golden/ci@"+res.Manifest || p.SHA256 != topLayer.Digest || p.Size != lazySize {
		t.Fatalf("parent reference %+v, want s3 s3://golden/ci@%s with sha256 %s", p, res.Manifest, topLayer.Digest)
	}

	d, err := diffdisk.Open(job, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mine := bytes.Repeat([]byte{0x5a}, 1<<20)
	if _, err := d.WriteAt(mine, 3<<20); err != nil {
		t.Fatal(err)
	}
	copy(want[3<<20:], mine)
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, lazySize)
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the lazy chain reads other bytes than the pushed chain with the job's write")
	}
	cold := storeBase(t, d)
	t.Logf("cold: %+v", cold.StoreCounters)
	if cold.FetchedChunks == 0 || cold.GETs < cold.FetchedChunks {
		t.Errorf("cold read: %+v: want chunks fetched, one GET each at least", cold.StoreCounters)
	}
	list, err := d.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 4 || list[1].Format != disklayer.FormatS3 || !strings.HasPrefix(list[1].Path, "s3://golden/ci/blobs/sha256/") || list[1].UUID != p.UUID || !list[1].Sealed {
		t.Errorf("layers: %d, second %+v: want the job and the 3 pushed layers, read from s3, the first with uuid %s, sealed", len(list), list[1], p.UUID)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// The tag moves: the job still reads the manifest it was made over.
	other := makeChain(t, t.TempDir(), lazySize, lazyData, 8)
	if _, err := remote.Push(context.Background(), s, other, "v1", remote.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	d, err = diffdisk.Open(job, diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("after the tag moved, the job reads other bytes")
	}
	warm := storeBase(t, d)
	t.Logf("warm: %+v", warm.StoreCounters)
	if warm.FetchedChunks != 0 || warm.GETs != 0 || warm.CacheHits == 0 {
		t.Errorf("second open on the same machine: %+v, want no GET, everything from the cache", warm.StoreCounters)
	}
}

// TestLazyTamperedBlob: the base's blob gets other bytes under the same
// key (the object file overwritten in versitygw's directory: the ETag
// stays) or is replaced through the API (a new ETag). Reads that touch
// the changed chunk fail with EIO naming the blob, nothing else is
// returned for them, reads elsewhere go on.
func TestLazyTamperedBlob(t *testing.T) {
	srv, s, top, res := lazySetup(t)
	want := readAll(t, top)
	job := filepath.Join(t.TempDir(), "job.db")
	if err := diffdisk.Create(job, diffdisk.CreateOptions{Backing: "s3://golden/ci:v1", Endpoint: srv.Endpoint}); err != nil {
		t.Fatal(err)
	}
	base := res.Layers[0]
	blobFile := srv.ObjectPath(bucket, s.BlobKey(base.Digest))
	for _, c := range []struct {
		name   string
		spoil  func()
		reason error
	}{
		{"same key, other bytes", func() {
			f, err := os.OpenFile(blobFile, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 4096), base.Size/2); err != nil {
				t.Fatal(err)
			}
		}, chunks.ErrMismatch},
		{"replaced through the API", func() {
			b, err := os.ReadFile(blobFile)
			if err != nil {
				t.Fatal(err)
			}
			b[base.Size/2] ^= 1
			if err := remote.ReplaceObjectForTest(context.Background(), s, s.BlobKey(base.Digest), b); err != nil {
				t.Fatal(err)
			}
		}, chunks.ErrGone},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("HIBDISK_CACHE", t.TempDir()) // nothing verified before
			orig, err := os.ReadFile(blobFile)
			if err != nil {
				t.Fatal(err)
			}
			d, err := diffdisk.Open(job, diffdisk.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			c.spoil() // after the open pinned the blob's ETag
			buf := make([]byte, 1<<20)
			failed, good := 0, 0
			for off := int64(0); off < lazySize; off += int64(len(buf)) {
				if _, err := d.ReadAt(buf, off); err != nil {
					if !errors.Is(err, c.reason) || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), base.Digest) {
						t.Fatalf("read at %d: %v, want EIO (%v) naming %s", off, err, c.reason, base.Digest)
					}
					failed++
					continue
				}
				if !bytes.Equal(buf, want[off:off+int64(len(buf))]) {
					t.Fatalf("read at %d returned other bytes than the pushed chain's", off)
				}
				good++
			}
			t.Logf("%d MiB read, %d failed", good, failed)
			if failed == 0 {
				t.Error("no read failed over the changed blob")
			}
			// Put the blob back for the next case (the replaced one has a
			// new ETag: a fresh open pins it).
			if err := os.WriteFile(blobFile, orig, 0o644); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestLazyCreateMissing: a missing tag, or a manifest whose blob is
// gone, is one clear error at create, and no layer is left.
func TestLazyCreateMissing(t *testing.T) {
	srv, s, _, res := lazySetup(t)
	dir := t.TempDir()
	job := filepath.Join(dir, "job.db")
	err := diffdisk.Create(job, diffdisk.CreateOptions{Backing: "s3://golden/ci:nope", Endpoint: srv.Endpoint})
	if !errors.Is(err, remote.ErrNoTag) || !strings.Contains(err.Error(), `no tag "nope"`) {
		t.Errorf("create over a missing tag: %v, want ErrNoTag", err)
	}
	if err := os.Remove(srv.ObjectPath(bucket, s.BlobKey(res.Layers[1].Digest))); err != nil {
		t.Fatal(err)
	}
	err = diffdisk.Create(job, diffdisk.CreateOptions{Backing: "s3://golden/ci:v1", Endpoint: srv.Endpoint})
	if !errors.Is(err, remote.ErrMissingBlob) || !strings.Contains(err.Error(), res.Layers[1].Digest) {
		t.Errorf("create over a manifest with a missing blob: %v, want ErrMissingBlob naming %s", err, res.Layers[1].Digest)
	}
	if _, err := os.Stat(job); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed create left %s: %v", job, err)
	}
}

// TestLazyStoreDown: the store is killed while a job reads: reads wait
// and go on once it is back; not back, they fail with EIO after the
// bounded wait. What the job wrote and flushed is in its layer.
func TestLazyStoreDown(t *testing.T) {
	srv, _, top, _ := lazySetup(t)
	want := readAll(t, top)
	job := filepath.Join(t.TempDir(), "job.db")
	if err := diffdisk.Create(job, diffdisk.CreateOptions{Backing: "s3://golden/ci:v1", Endpoint: srv.Endpoint}); err != nil {
		t.Fatal(err)
	}
	d, err := diffdisk.Open(job, diffdisk.Options{ReconnectDelay: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	mine := bytes.Repeat([]byte{0x42}, 64<<10)
	if _, err := d.WriteAt(mine, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	copy(want, mine)
	buf := make([]byte, 1<<20)
	if _, err := d.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}

	// Killed and back within the wait: the read waits, then succeeds.
	srv.Kill()
	done := make(chan error, 1)
	go func() {
		_, err := d.ReadAt(buf, 4<<20)
		done <- err
	}()
	time.Sleep(time.Second)
	srv.Restart(t)
	if err := <-done; err != nil {
		t.Fatalf("read while the store was down for a second: %v", err)
	}
	if !bytes.Equal(buf, want[4<<20:5<<20]) {
		t.Fatal("read across the outage returned other bytes")
	}
	if st := storeBase(t, d); st.Retries == 0 {
		t.Errorf("no retries counted across the outage: %+v", st.StoreCounters)
	}

	// Killed for good: EIO after the wait.
	srv.Kill()
	if _, err := d.ReadAt(buf, 6<<20); !errors.Is(err, chunks.ErrUnavailable) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with the store gone: %v, want EIO (store unavailable)", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// The job's flushed write is in its own layer (read without the store).
	f, err := diffdisk.TopLayer(job)
	if err != nil {
		t.Fatal(err)
	}
	if f.Stats != nil && f.Stats.DataSectors == 0 {
		t.Errorf("job.db holds no data after a flushed write: %+v", f.Stats)
	}
	srv.Restart(t)
	if got := readAll(t, job); !bytes.Equal(got[:64<<10], mine) {
		t.Error("the job's flushed write did not survive the store going away")
	}
}

// TestLazyChunkManifest: a manifest without page digests (pushed as
// before them) still opens lazily and reads by whole chunks: every
// fetch is a whole chunk, and a second open fetches nothing. With page
// digests, the same reads fetch fewer bytes.
func TestLazyChunkManifest(t *testing.T) {
	srv, s := server(t, "s3://golden/old")
	t.Setenv("HIBDISK_CACHE", t.TempDir())
	top := makeChain(t, t.TempDir(), lazySize, lazyData, 9)
	want := readAll(t, top)
	fetched := map[bool]int64{}
	for _, pages := range []bool{false, true} {
		tag := map[bool]string{false: "chunks", true: "pages"}[pages]
		res, err := remote.Push(context.Background(), s, top, tag, remote.PushOptions{NoPageDigests: !pages})
		if err != nil {
			t.Fatal(err)
		}
		m, err := remote.OpenLazy(context.Background(), s, res.Manifest, remote.LazyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Manifest.Layers {
			if (l.Pages != nil) != pages || (l.PageSize == 4096) != pages {
				t.Errorf("%s: layer %s: page size %d, page digests %v", tag, l.Digest, l.PageSize, l.Pages)
			}
		}
		m.Close()
		job := filepath.Join(t.TempDir(), "job.db")
		if err := diffdisk.Create(job, diffdisk.CreateOptions{Backing: "s3://golden/old:" + tag, Endpoint: srv.Endpoint}); err != nil {
			t.Fatal(err)
		}
		t.Setenv("HIBDISK_CACHE", t.TempDir()) // what create fetched counts too
		for round := range 2 {
			d, err := diffdisk.Open(job, diffdisk.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			// A few scattered sectors, then the whole disk.
			got := make([]byte, 4096)
			for _, off := range []int64{1 << 20, 3<<20 + 8192, 5 << 20} {
				if _, err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, want[off:off+4096]) {
					t.Fatalf("%s: read at %d: %v", tag, off, err)
				}
			}
			all := make([]byte, lazySize)
			if _, err := d.ReadAt(all, 0); err != nil || !bytes.Equal(all, want) {
				t.Fatalf("%s: the chain reads other bytes: %v", tag, err)
			}
			st := storeBase(t, d).StoreCounters
			d.Close()
			t.Logf("%s, open %d: %+v", tag, round, st)
			if round == 1 {
				if st.GETs != 0 || st.FetchedBytes != 0 {
					t.Errorf("%s: second open on the same machine: %+v, want no GET", tag, st)
				}
				continue
			}
			fetched[pages] = st.FetchedBytes
			if !pages && st.FetchedBytes != st.FetchedChunks*remote.DefaultChunkSize {
				// Each layer's last chunk may be short: at most one a layer.
				if st.FetchedBytes < (st.FetchedChunks-3)*remote.DefaultChunkSize {
					t.Errorf("chunks: %+v: fetches smaller than chunks", st)
				}
			}
		}
	}
	if fetched[true] >= fetched[false] {
		t.Errorf("with page digests %d bytes fetched, by chunks %d: want fewer", fetched[true], fetched[false])
	}
}
