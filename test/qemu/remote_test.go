package qemu_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// remoteBase is a golden base served read-only by its own `hibdisk
// serve` process, and a job layer made over its export.
type remoteBase struct {
	dir, golden, job string
	sock, uri        string
	server           *server
}

// newRemoteBase converts a raw image with Pattern("base") over
// [0, dataLen) to golden.db, serves it read-only on a unix socket and
// creates job.db over the export (-F nbd).
func newRemoteBase(t *testing.T, dataLen int) *remoteBase {
	t.Helper()
	dir := t.TempDir()
	r := &remoteBase{dir: dir, golden: filepath.Join(dir, "golden.db"), job: filepath.Join(dir, "job.db")}
	raw := filepath.Join(dir, "golden.img")
	writeRawBase(t, raw, diskSize, "base", dataLen)
	hibdisk(t, "convert", raw, r.golden)
	r.sock = socketPath(t, "base.sock")
	r.uri = nbdUnixURI(r.sock)
	r.server = startServe(t, r.sock, "--read-only", r.golden)
	hibdisk(t, "create", "-b", r.uri, "-F", "nbd", r.job)
	return r
}

// restart kills the base server with SIGKILL and, after pause, serves
// file read-only at the same socket.
func (r *remoteBase) restart(t *testing.T, pause time.Duration, file string) {
	t.Helper()
	r.server.kill()
	time.Sleep(pause)
	os.Remove(r.sock) // a killed server leaves its socket behind
	r.server = startServe(t, r.sock, "--read-only", file)
}

// readLoopParams has the guest write its patterns at both ends and read
// [off, off+n) of the disk round after round.
func readLoopParams(seed string, off, n int64, rounds, seconds int) map[string]string {
	return map[string]string{
		"disk": "data", "seed": seed, "len": fmt.Sprint(patternLen),
		"read-off": fmt.Sprint(off), "read-len": fmt.Sprint(n),
		"rounds": fmt.Sprint(rounds), "seconds": fmt.Sprint(seconds),
	}
}

// remoteReport matches serve's exit line about a remote base.
var remoteReport = regexp.MustCompile(`remote base (\S+): fetched (\d+) bytes \((\d+) at open, verifying its identity\), (\d+) reconnect`)

// remoteCost is what serve's exit line says a remote base cost.
type remoteCost struct{ fetched, atOpen, reconnects int64 }

func parseRemoteCost(t *testing.T, stderr string) remoteCost {
	t.Helper()
	m := remoteReport.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("hibdisk serve said nothing about its remote base: %q", stderr)
	}
	var c remoteCost
	for i, dst := range []*int64{&c.fetched, &c.atOpen, &c.reconnects} {
		n, err := strconv.ParseInt(m[i+2], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		*dst = n
	}
	return c
}

// TestBootOverRemoteBaseReconnect: the guest reads its disk, a diff
// layer over another hibdisk serve's export, round after round; the
// base server is killed with SIGKILL mid-run and restarted on the same
// socket two seconds later. The guest's reads stall and go on without an
// I/O error, every round reads the same bytes, and its writes are all in
// job.db.
func TestBootOverRemoteBaseReconnect(t *testing.T) {
	guestKit(t)
	r := newRemoteBase(t, baseDataLen)
	jobSock := socketPath(t, "job.sock")
	job := startServe(t, jobSock, r.job)

	readOff, readLen := int64(patternLen), int64(baseDataLen-patternLen)
	started := time.Now()
	m := startGuest(t, guestproto.TaskReadLoop, readLoopParams("job", readOff, readLen, 2, 15),
		qemu.Disk{Name: "data", Socket: jobSock})
	waitNote(t, m, "first-round-ms")
	r.restart(t, 2*time.Second, r.golden)
	res := waitResult(t, m, started)
	t.Logf("guest: %s rounds, %s bytes read, slowest read %s ms, first round %s ms",
		res.Notes["rounds"], res.Notes["read-bytes"], res.Notes["max-read-ms"], res.Notes["first-round-ms"])
	if want := sha(guestproto.PatternBytes("base", readOff, int(readLen))); res.Notes["sample"] != want {
		t.Errorf("guest read base bytes with sha256 %s, want %s", res.Notes["sample"], want)
	}
	cost := parseRemoteCost(t, job.stop(t))
	t.Logf("job server: %+v", cost)
	if cost.reconnects < 1 {
		t.Errorf("the job server never reconnected to the base server")
	}
	checkPatternsLayer(t, r.job, "job")
}

// waitNote waits for the guest's note key; it fails the test, with the
// console, when the guest ends or times out first.
func waitNote(t *testing.T, m *qemu.Machine, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
	defer cancel()
	prefix := guestproto.Note + key + "="
	_, err := m.WaitLine(ctx, func(l string) bool {
		return strings.Contains(l, prefix) || strings.Contains(l, guestproto.Fail)
	})
	lines := strings.Join(m.Lines(), "\n")
	if err != nil || !strings.Contains(lines, prefix) {
		m.Kill()
		m.Wait(context.Background())
		t.Fatalf("guest never noted %s: %v\nconsole:\n%s\nqemu stderr:\n%s", key, err, lines, m.Stderr())
	}
}

// TestRemoteBaseReplacedIsEIO: the base server restarts serving another
// layer at the same socket. The job server refuses it: reads of what
// job.db does not hold fail with EIO (qemu-io sees it within seconds),
// never data of the other disk, while what job.db holds still reads.
func TestRemoteBaseReplacedIsEIO(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	r := newRemoteBase(t, baseDataLen)
	otherRaw, other := filepath.Join(r.dir, "other.img"), filepath.Join(r.dir, "other.db")
	writeRawBase(t, otherRaw, diskSize, "base", baseDataLen) // the same bytes, another layer
	hibdisk(t, "convert", otherRaw, other)
	jobSock := socketPath(t, "job.sock")
	job := startServe(t, jobSock, "--reconnect-delay", "10s", r.job)
	jobURI := nbdUnixURI(jobSock)
	run(t, "qemu-io", "-f", "raw", jobURI, "-c", "write -P 0x42 0 64k", "-c", "read 1M 64k")

	r.restart(t, 0, other)
	began := time.Now()
	out := qemuIOOutput(t, jobURI, "read 1M 64k")
	elapsed := time.Since(began)
	t.Logf("qemu-io after the swap (%v): %s", elapsed.Round(time.Millisecond), out)
	if !strings.Contains(out, "Input/output error") {
		t.Errorf("a read of the base through the job server after the base was replaced: %q, want EIO", out)
	}
	if elapsed > 10*time.Second {
		t.Errorf("the read took %v to fail, want well under the 10 s reconnect delay", elapsed)
	}
	if out := qemuIOOutput(t, jobURI, "read -P 0x42 0 64k"); !strings.Contains(out, "read 65536/65536") {
		t.Errorf("job.db's own write no longer reads back: %q", out)
	}
	if stderr := job.stop(t); !strings.Contains(stderr, "another disk") {
		t.Errorf("the job server did not say why its base reads fail: %q", stderr)
	}
}

// qemuIOOutput runs qemu-io read-only on the raw export at uri and
// returns its output, whatever its exit status (qemu-io reports a failed
// read in its output).
func qemuIOOutput(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-r", "-f", "raw", uri}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, _ := execOutput(ctx, "qemu-io", args...)
	return out
}

// TestDiffOverNbdkitMemory: a diff layer over a writable `nbdkit memory`
// export that nbdcopy filled: writes through `hibdisk serve` read back,
// the export compares identical to the expected view under qemu-img,
// and nbdkit's disk still holds only what nbdcopy put there.
func TestDiffOverNbdkitMemory(t *testing.T) {
	testenv.RequireTools(t, "nbdkit", "nbdkit")
	testenv.RequireTools(t, "libnbd-bin", "nbdcopy")
	testenv.RequireTools(t, "qemu-utils", "qemu-io", "qemu-img")
	dir := t.TempDir()
	raw, top := filepath.Join(dir, "golden.img"), filepath.Join(dir, "job.db")
	writeRawBase(t, raw, diskSize, "base", baseDataLen)
	baseSock := socketPath(t, "nbdkit.sock")
	startNbdkit(t, baseSock, "memory", fmt.Sprint(diskSize))
	baseURI := nbdUnixURI(baseSock)
	run(t, "nbdcopy", raw, baseURI)
	hibdisk(t, "create", "-b", baseURI, "-F", "nbd", top)

	jobSock := socketPath(t, "job.sock")
	job := startServe(t, jobSock, top)
	jobURI := nbdUnixURI(jobSock)
	run(t, "qemu-io", "-f", "raw", jobURI, "-c", "write -P 0x5a 1M 64k", "-c", "write -z 2M 64k",
		"-c", "read -P 0x5a 1M 64k", "-c", "read -P 0 2M 64k")
	expected := filepath.Join(dir, "expected.img")
	writeWithRanges(t, raw, expected, map[int64]byte{1 << 20: 0x5a, 2 << 20: 0})
	if out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", jobURI, expected); !strings.Contains(out, "identical") {
		t.Errorf("qemu-img compare of the job export with the expected view: %s", out)
	}
	job.stop(t)

	if out := hibdisk(t, "compare", top, expected); !strings.Contains(out, "identical") {
		t.Errorf("hibdisk compare %s %s: %s", top, expected, out)
	}
	checkLayer(t, top)
	if out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", baseURI, raw); !strings.Contains(out, "identical") {
		t.Errorf("nbdkit's disk changed: %s", out)
	}
}

// writeWithRanges writes to dst the raw image src with 64 KiB at each
// offset of fill set to its byte.
func writeWithRanges(t *testing.T, src, dst string, fill map[int64]byte) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for off, c := range fill {
		for i := range int64(64 << 10) {
			b[off+i] = c
		}
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// startNbdkit runs `nbdkit -f -U sock PLUGIN ARGS...` until the test
// ends and returns once the socket is there.
func startNbdkit(t *testing.T, sock string, args ...string) {
	t.Helper()
	cmd := exec.Command("nbdkit", append([]string{"-f", "-U", sock}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		select {
		case <-exited:
			t.Fatalf("nbdkit exited before listening: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdkit: socket %s never appeared", sock)
		}
	}
}

// cachedBoot is one boot measured by TestReadCacheColdWarmBoot.
type cachedBoot struct {
	open      time.Duration // serve's start: opening the chain, identity check included
	guest     time.Duration // QEMU start to the guest's result
	guestRead int64         // bytes the guest's task read
	cost      remoteCost
}

// bootReading serves layer (with serve's extra args), boots the guest
// reading the whole disk once, stops the server and returns what it
// cost; k is the link the layer's base is reached through.
func bootReading(t *testing.T, name string, k *link, layer string, args ...string) cachedBoot {
	t.Helper()
	sock := socketPath(t, "job.sock")
	down := k.down.Load()
	began := time.Now()
	job := startServe(t, sock, append(args, layer)...)
	b := cachedBoot{open: time.Since(began)}
	began = time.Now()
	res := runGuest(t, guestproto.TaskReadLoop, readLoopParams("job", 0, diskSize, 1, 0), qemu.Disk{Name: "data", Socket: sock})
	b.guest = time.Since(began)
	var err error
	if b.guestRead, err = strconv.ParseInt(res.Notes["read-bytes"], 10, 64); err != nil {
		t.Fatalf("guest's read-bytes %q: %v", res.Notes["read-bytes"], err)
	}
	b.cost = parseRemoteCost(t, job.stop(t))
	t.Logf("%-8s serve open %6v, guest %6v (whole-disk read %s ms); guest read %d bytes, fetched from the base %d bytes (%d of them at open), %d bytes came down the link",
		name, b.open.Round(time.Millisecond), b.guest.Round(time.Millisecond), res.Notes["first-round-ms"],
		b.guestRead, b.cost.fetched, b.cost.atOpen, k.down.Load()-down)
	return b
}

// The link TestReadCacheColdWarmBoot reaches its remote base through: a
// slow network, 5 ms each way and 100 Mbit/s.
const (
	linkLatency   = 5 * time.Millisecond
	linkBandwidth = 100e6 / 8
)

// TestReadCacheColdWarmBoot: with `serve --read-cache` over a remote
// base behind a slow link, the first (cold) boot of a fresh job layer
// fetches each block of the base at most once and the second (warm) boot
// of the same layer fetches nothing at all (the base is a read-only
// hibdisk export, whose uuid and generation identify it without reading
// it); a boot without the read cache is logged beside them. Times are
// logged, not asserted.
func TestReadCacheColdWarmBoot(t *testing.T) {
	guestKit(t)
	const dataLen = 24 << 20
	r := newRemoteBase(t, dataLen)
	linkSock := socketPath(t, "link.sock")
	k := startLink(t, linkSock, r.sock, linkLatency, linkBandwidth)
	cached, plain := filepath.Join(r.dir, "cached.db"), filepath.Join(r.dir, "plain.db")
	for _, job := range []string{cached, plain} {
		hibdisk(t, "create", "-b", nbdUnixURI(linkSock), "-F", "nbd", job)
	}
	cold := bootReading(t, "cold", k, cached, "--read-cache")
	warm := bootReading(t, "warm", k, cached, "--read-cache")
	bootReading(t, "no-cache", k, plain)

	if got := cold.cost.fetched - cold.cost.atOpen; got > cold.guestRead || got > dataLen {
		t.Errorf("cold boot: fetched %d bytes after open, more than the guest read (%d) or the base holds (%d)", got, cold.guestRead, dataLen)
	}
	if got := warm.cost.fetched; got != 0 {
		t.Errorf("warm boot: fetched %d bytes (%d at open), want 0 (everything is in the read cache, and a read-only hibdisk base is identified by its generation)", got, warm.cost.atOpen)
	}
	if fi, err := os.Stat(cached); err == nil {
		t.Logf("cached.db after the cold and warm boots: %d bytes", fi.Size())
	}
	checkLayer(t, cached)
}
