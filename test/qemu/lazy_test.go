package qemu_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/s3test"
	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/remote"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// Lazy remote bases (issue 20, item 3): a golden layer pushed to a real
// versitygw, job layers made over s3://golden/ci:v1 read it in place
// through a counting proxy (the GETs the store was asked, counted where
// they arrive).

const lazyBucket = "golden"

// lazyStore runs versitygw and the counting proxy in front of it, and
// gives the test its own chunk cache (HIBDISK_CACHE, inherited by every
// hibdisk process the test starts).
func lazyStore(t *testing.T) (*s3test.Server, *s3test.Proxy) {
	t.Helper()
	srv := s3test.Start(t, lazyBucket)
	t.Setenv("HIBDISK_CACHE", t.TempDir())
	return srv, s3test.StartProxy(t, srv)
}

// pushLazy pushes the chain whose top is layer (sealing it) to
// s3://golden/PREFIX:v1 in chunks of chunkSize (0: the default) and
// returns that URL.
func pushLazy(t *testing.T, srv *s3test.Server, layer, prefix string, chunkSize int64) string {
	t.Helper()
	url := "s3://" + lazyBucket + "/" + prefix + ":v1"
	u, err := remote.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	s, err := remote.Open(context.Background(), u, remote.Options{Endpoint: srv.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Push(context.Background(), s, layer, "v1", remote.PushOptions{ChunkSize: chunkSize}); err != nil {
		t.Fatal(err)
	}
	return url
}

// lazyGolden pushes a golden layer holding Pattern("base") over [0,
// baseDataLen) of a diskSize disk and returns its URL.
func lazyGolden(t *testing.T, srv *s3test.Server) string {
	t.Helper()
	dir := t.TempDir()
	raw, golden := filepath.Join(dir, "golden.img"), filepath.Join(dir, "golden.db")
	writeRawBase(t, raw, diskSize, "base", baseDataLen)
	hibdisk(t, "convert", raw, golden)
	return pushLazy(t, srv, golden, "ci", 0)
}

// statsJSON is what serve --stats and vm run --stats write.
type statsJSON struct {
	Exports []struct {
		Name           string `json:"name"`
		GuestReads     int64  `json:"guest_reads"`
		GuestReadBytes int64  `json:"guest_read_bytes"`
		StoreBases     []struct {
			URL           string `json:"url"`
			FetchedChunks int64  `json:"fetched_chunks"`
			FetchedBytes  int64  `json:"fetched_bytes"`
			GETs          int64  `json:"gets"`
			CacheHits     int64  `json:"cache_hits"`
			Retries       int64  `json:"retries"`
		} `json:"store_bases"`
	} `json:"exports"`
}

// lazyCost is one export's counters, for a chain over one lazy base.
type lazyCost struct {
	guestRead, fetched, chunks, gets, hits, retries int64
}

func (c lazyCost) String() string {
	ratio := 0.0
	if c.guestRead > 0 {
		ratio = float64(c.fetched) / float64(c.guestRead)
	}
	return fmt.Sprintf("guest read %d bytes, fetched %d bytes (%.2fx) in %d chunks, %d GETs, %d cache hits, %d retries",
		c.guestRead, c.fetched, ratio, c.chunks, c.gets, c.hits, c.retries)
}

func readStats(t *testing.T, path string) lazyCost {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	var s statsJSON
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("stats %s: %v", path, err)
	}
	if len(s.Exports) == 0 || len(s.Exports[0].StoreBases) != 1 {
		t.Fatalf("stats %s: want one export over one store base: %s", path, b)
	}
	x, sb := s.Exports[0], s.Exports[0].StoreBases[0]
	return lazyCost{x.GuestReadBytes, sb.FetchedBytes, sb.FetchedChunks, sb.GETs, sb.CacheHits, sb.Retries}
}

// lazyBoot serves job (made over url through the proxy) with --stats,
// runs the test guest's read loop over the base's data once, checks what
// it read, stops the server and returns the counters and the boot's
// time. during, when set, runs once the guest has started.
func lazyBoot(t *testing.T, name, job string, during func(), serveArgs ...string) (lazyCost, time.Duration) {
	t.Helper()
	sock := socketPath(t, name+".sock")
	statsFile := filepath.Join(filepath.Dir(job), name+".stats.json")
	began := time.Now()
	srvArgs := append(append([]string{"--stats", statsFile}, serveArgs...), job)
	proc := startServe(t, sock, srvArgs...)
	readOff, readLen := int64(patternLen), int64(baseDataLen-patternLen)
	m := startGuest(t, guestproto.TaskReadLoop, readLoopParams("job", readOff, readLen, 1, 0), qemu.Disk{Name: "data", Socket: sock})
	if during != nil {
		during()
	}
	res := waitResult(t, m, began)
	took := time.Since(began)
	if want := sha(guestproto.PatternBytes("base", readOff, int(readLen))); res.Notes["sample"] != want {
		t.Errorf("%s: guest read base bytes with sha256 %s, want %s", name, res.Notes["sample"], want)
	}
	stderr := proc.stop(t)
	if !strings.Contains(stderr, "store base s3://") {
		t.Errorf("%s: serve said nothing about its store base on exit: %q", name, stderr)
	}
	c := readStats(t, statsFile)
	t.Logf("%-6s %v; %s", name, took.Round(time.Millisecond), c)
	return c, took
}

// TestLazyBootTestGuest: the test guest reads its data disk, a diff
// layer over a lazy remote base. Cold, the bytes fetched from the store
// are at most 1.2x what the guest read; a second job on the same
// machine fetches nothing (GETs counted at the proxy too). Then the
// store is killed before a third job's guest reads (a fresh cache):
// its reads wait and go on when the store is back, and what the guest
// wrote and flushed is in its layer.
func TestLazyBootTestGuest(t *testing.T) {
	guestKit(t)
	srv, proxy := lazyStore(t)
	url := lazyGolden(t, srv)
	dir := t.TempDir()
	job := func(name string) string {
		p := filepath.Join(dir, name+".db")
		hibdisk(t, "create", "-b", url, "--endpoint", proxy.Endpoint, p)
		return p
	}

	coldJob := job("cold")
	t.Setenv("HIBDISK_CACHE", t.TempDir()) // what create fetched counts too
	cold, _ := lazyBoot(t, "cold", coldJob, nil)
	if cold.chunks == 0 {
		t.Fatalf("cold boot fetched nothing from the store: %v", cold)
	}
	if float64(cold.fetched) > 1.2*float64(cold.guestRead) {
		t.Errorf("cold boot: %v: fetched more than 1.2x what the guest read", cold)
	}
	warmJob := job("warm") // create reads the tag
	gets := proxy.GETs()
	warm, _ := lazyBoot(t, "warm", warmJob, nil)
	if warm.gets != 0 || warm.chunks != 0 || warm.hits == 0 {
		t.Errorf("warm boot: %v: want everything from the machine's cache", warm)
	}
	if n := proxy.GETs() - gets; n != 0 {
		t.Errorf("warm boot: the store got %d GETs, want 0", n)
	}

	// The store dies once the job is open, with nothing of the data
	// cached, and comes back 2 s after the first GET that failed.
	t.Setenv("HIBDISK_CACHE", t.TempDir())
	down := job("down")
	downCost, _ := lazyBoot(t, "down", down, func() {
		srv.Kill()
		before := proxy.GETs()
		for deadline := time.Now().Add(guestTimeout); proxy.GETs() == before; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the guest never read through the dead store")
			}
		}
		time.Sleep(2 * time.Second)
		srv.Restart(t)
	}, "--reconnect-delay", "60s")
	if downCost.retries == 0 {
		t.Errorf("store down mid-boot: %v: no retries counted", downCost)
	}
	checkPatternsLayer(t, down, "job")
}

// TestLazyStoreGoneIsEIO: with the store killed and not restarted, a
// read of what the job layer does not hold fails with EIO after the
// bounded wait (--reconnect-delay), what the job wrote and flushed
// still reads, and once the store is back the chain holds it.
func TestLazyStoreGoneIsEIO(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	srv, proxy := lazyStore(t)
	url := lazyGolden(t, srv)
	job := filepath.Join(t.TempDir(), "job.db")
	hibdisk(t, "create", "-b", url, "--endpoint", proxy.Endpoint, job)
	sock := socketPath(t, "job.sock")
	s := startServe(t, sock, "--reconnect-delay", "3s", job)
	uri := nbdUnixURI(sock)
	run(t, "qemu-io", "-f", "raw", uri, "-c", "write -P 0x42 0 64k", "-c", "flush", "-c", "read -P 0x42 0 64k")
	srv.Kill()
	began := time.Now()
	out := qemuIOOutput(t, uri, "read 2M 64k")
	t.Logf("read with the store gone (%v): %s", time.Since(began).Round(time.Millisecond), out)
	if !strings.Contains(out, "Input/output error") {
		t.Errorf("read of the base with the store gone: %q, want EIO", out)
	}
	if out := qemuIOOutput(t, uri, "read -P 0x42 0 64k"); !strings.Contains(out, "read 65536/65536") {
		t.Errorf("the job's flushed write no longer reads back: %q", out)
	}
	if stderr := s.stop(t); !strings.Contains(stderr, "retries") {
		t.Errorf("serve's exit line: %q", stderr)
	}
	srv.Restart(t)
	if got := readChain(t, job, 0, 64<<10); !bytes.Equal(got, bytes.Repeat([]byte{0x42}, 64<<10)) {
		t.Error("the job's flushed write is not in its chain")
	}
	checkLayer(t, job)
}

// TestLazyEightJobs: eight `hibdisk serve` processes, each over its own
// job layer over one lazy base, read the base's data at once through
// qemu-io: the store is asked for each chunk once (every ranged GET the
// proxy saw, once), and the servers' counters add up to the same.
func TestLazyEightJobs(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	srv, proxy := lazyStore(t)
	url := lazyGolden(t, srv)
	dir := t.TempDir()
	const jobs = 8
	var servers []*server
	var uris, statsFiles []string
	for i := range jobs {
		job := filepath.Join(dir, fmt.Sprintf("job%d.db", i))
		hibdisk(t, "create", "-b", url, "--endpoint", proxy.Endpoint, job)
		sock := socketPath(t, fmt.Sprintf("job%d.sock", i))
		statsFiles = append(statsFiles, filepath.Join(dir, fmt.Sprintf("job%d.json", i)))
		servers = append(servers, startServe(t, sock, "--stats", statsFiles[i], job))
		uris = append(uris, nbdUnixURI(sock))
	}
	// create opened the chain (its first chunks are cached): what the
	// eight fetch is what the store is asked from here on.
	atStart := len(proxy.Ranged())
	var wg sync.WaitGroup
	outs := make([]string, jobs)
	for i := range jobs {
		wg.Go(func() {
			outs[i] = qemuIOOutput(t, uris[i], fmt.Sprintf("read -P 0 %d 64k", diskSize-(64<<10)), fmt.Sprintf("read 0 %d", baseDataLen))
		})
	}
	wg.Wait()
	var fetched, gets int64
	for i, s := range servers {
		if !strings.Contains(outs[i], fmt.Sprintf("read %d/%d", baseDataLen, baseDataLen)) {
			t.Errorf("job %d: qemu-io: %s", i, outs[i])
		}
		s.stop(t)
		c := readStats(t, statsFiles[i])
		t.Logf("job %d: %v", i, c)
		fetched += c.chunks
		gets += c.gets
	}
	ranged := proxy.Ranged()
	for k, n := range ranged {
		if n != 1 {
			t.Errorf("the store was asked for %s %d times", k, n)
		}
	}
	n := int64(len(ranged) - atStart)
	t.Logf("%d jobs: %d ranged GETs at the store (%d before, by create), %d GETs and %d chunks fetched by the servers", jobs, n, atStart, gets, fetched)
	if n != fetched || gets != fetched || fetched == 0 {
		t.Errorf("the store saw %d ranged GETs, the servers counted %d GETs for %d chunks", n, gets, fetched)
	}
}

// TestLazyTamperedBlob: the golden blob gets other bytes under the same
// key (its file in versitygw's directory overwritten: same ETag). A
// guest's read that touches the changed chunk gets EIO through serve,
// and the CLI fails in one line naming the blob; nothing unverified is
// cached.
func TestLazyTamperedBlob(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	srv, proxy := lazyStore(t)
	url := lazyGolden(t, srv)
	dir := t.TempDir()
	job := filepath.Join(dir, "job.db")
	hibdisk(t, "create", "-b", url, "--endpoint", proxy.Endpoint, job)
	t.Setenv("HIBDISK_CACHE", t.TempDir()) // create verified and cached the first chunks
	// The golden layer is the only blob of its size class: the largest
	// object under blobs/ (the manifest is small).
	blob := largestFile(t, filepath.Join(srv.Dir, lazyBucket, "ci", "blobs"))
	f, err := os.OpenFile(blob, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	// The data of [1 MiB, 2 MiB) of the disk sits about a quarter in.
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xee}, 256<<10), fi.Size()/4); err != nil {
		t.Fatal(err)
	}
	f.Close()

	sock := socketPath(t, "job.sock")
	s := startServe(t, sock, job)
	out := qemuIOOutput(t, nbdUnixURI(sock), fmt.Sprintf("read 0 %d", baseDataLen))
	if !strings.Contains(out, "Input/output error") {
		t.Errorf("read over the tampered blob: %q, want EIO", out)
	}
	if stderr := s.stop(t); !strings.Contains(stderr, "does not match its digest") {
		t.Logf("serve's stderr: %s", stderr)
	}
	_, stderr, err := hibdiskTry(t, "compare", job, job)
	if err == nil || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "does not match its digest") {
		t.Errorf("hibdisk compare over the tampered blob: %v, stderr %q: want one line saying the chunk does not match", err, stderr)
	}
}

// largestFile is the largest regular file under dir.
func largestFile(t *testing.T, dir string) string {
	t.Helper()
	var best string
	var size int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > size {
			best, size = p, fi.Size()
		}
		return nil
	})
	if best == "" {
		t.Fatalf("no file under %s", dir)
	}
	return best
}

// TestLazyDebianBoot: the Debian guest boots its work unit from a diff
// layer over the golden layer pushed to the store, cold (an empty
// cache) and warm (a second job, the same cache), and from a diff layer
// over the local golden layer, one after another: fetched <= 1.2x what
// the guest read when cold (pages, with page digests and the reads of
// them counted), nothing the cold boot fetched when warm.
// HIBDISK_LAZY_CHUNKS (a comma-separated list of chunk sizes in bytes)
// pushes with several chunk sizes, cold boots only; the default is
// remote.DefaultChunkSize. Lazy reads of a manifest with page digests
// do not depend on its chunk size (only pull does).
func TestLazyDebianBoot(t *testing.T) {
	g := debian(t)
	srv, proxy := lazyStore(t)
	dir := t.TempDir()
	golden := filepath.Join(dir, "golden.db")
	copyFile(t, g.golden, golden) // push seals its copy, not the shared one
	sizes := []int64{remote.DefaultChunkSize}
	if env := os.Getenv("HIBDISK_LAZY_CHUNKS"); env != "" {
		sizes = nil
		for _, f := range strings.Split(env, ",") {
			n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
			if err != nil {
				t.Fatalf("HIBDISK_LAZY_CHUNKS: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	// fetched[name] are the ranged GETs the store saw during that boot.
	fetched := map[string]map[string]bool{}
	boot := func(name, backing string, args ...string) (lazyCost, time.Duration, bool) {
		job := name + ".db"
		hibdisk(t, append([]string{"create", "-b", backing}, append(args, filepath.Join(dir, job))...)...)
		if strings.HasPrefix(name, "cold") {
			t.Setenv("HIBDISK_CACHE", t.TempDir()) // what create fetched counts too
		}
		before := proxy.Ranged()
		defer func() {
			fetched[name] = map[string]bool{}
			for k, n := range proxy.Ranged() {
				if n > before[k] {
					fetched[name][k] = true
				}
			}
		}()
		started := time.Now()
		statsFile := filepath.Join(dir, name+".json")
		p := startVM(t, dir, "vm", "run", "--stats", statsFile, "--kernel", g.img.Kernel, "--initrd", g.img.Initrd,
			"--append", debianAppend+" "+workTarget, "--mem", debianMem, job)
		waitVMExit(t, p, 2*guestTimeout)
		took := time.Since(started)
		if !hasLine(p.Lines(), workDone) {
			t.Fatalf("%s: the work unit did not finish (no %q)\nconsole tail:\n%s", name, workDone, tail(p.Lines(), 40))
		}
		if len(args) == 0 {
			return lazyCost{}, took, false
		}
		return readStats(t, statsFile), took, true
	}
	gets0 := proxy.GETs()
	var lastURL, lastCold string
	var cold lazyCost
	for _, cs := range sizes {
		url := pushLazy(t, srv, golden, fmt.Sprintf("debian-%d", cs), cs)
		lastURL = url
		before := proxy.GETs()
		lastCold = fmt.Sprintf("cold-%d", cs)
		var took time.Duration
		cold, took, _ = boot(lastCold, url, "--endpoint", proxy.Endpoint)
		t.Logf("chunk %4d KiB: cold boot %5.1f s, %v; %d GETs at the store (create included)", cs>>10, took.Seconds(), cold, proxy.GETs()-before)
		// The target: a manifest with page digests (what push
		// writes) is read a page at a time, whatever its chunk size.
		if ratio := float64(cold.fetched) / float64(cold.guestRead); ratio > 1.2 {
			t.Errorf("chunk %d KiB: cold boot fetched %d bytes, %.2fx the %d bytes the guest read: want at most 1.2x", cs>>10, cold.fetched, ratio, cold.guestRead)
		}
	}
	before := proxy.GETs()
	warm, took, _ := boot("warm", lastURL, "--endpoint", proxy.Endpoint)
	t.Logf("warm boot (chunk %d KiB): %5.1f s, %v", sizes[len(sizes)-1]>>10, took.Seconds(), warm)
	// A boot does not read exactly what the last one read (systemd's
	// random seed, the journal): the warm boot may fetch a chunk the
	// cold one did not need, never one it fetched.
	for k := range fetched["warm"] {
		if fetched[lastCold][k] {
			t.Errorf("warm boot fetched %s again: the cold boot on this machine had", k)
		}
	}
	if warm.chunks > cold.chunks/20 {
		t.Errorf("warm boot: %v: fetched more than a twentieth of the cold boot's %d chunks", warm, cold.chunks)
	}
	t.Logf("warm boot: %d GETs at the store (create's tag read included)", proxy.GETs()-before)
	_, took, _ = boot("local", golden)
	t.Logf("local base boot: %5.1f s; %d GETs in all", took.Seconds(), proxy.GETs()-gets0)
}
