package main

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// remoteReport matches serve's line about a remote base at exit: URI,
// bytes fetched, of them at open, reconnects.
var remoteReport = regexp.MustCompile(`remote base (\S+): fetched (\d+) bytes \((\d+) at open, verifying its identity\), (\d+) reconnect`)

// remoteGolden makes golden.img (an 8 MiB ext4 with /hello.txt) and
// golden.db from it in a test directory, and serves golden.db read-only
// from a real hibdisk serve process on base.sock, as a machine holding a
// golden base would.
func remoteGolden(t *testing.T) (dir, sock, uri string, server *exec.Cmd) {
	t.Helper()
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	dir = testDir(t)
	makeGolden(t, dir, "8M")
	mustHib(t, dir, "convert", "golden.img", "golden.db")
	sock = filepath.Join(dir, "base.sock")
	server = holdLayer(t, dir, "--read-only", "--socket", sock, "golden.db")
	return dir, sock, "nbd+unix:///?socket=" + sock, server
}

// TestNBDBase: a diff layer over another hibdisk serve's export. create
// needs -F nbd; the layer reads the remote base, keeps its own writes,
// and is refused once the server serves another disk at that address.
func TestNBDBase(t *testing.T) {
	dir, sock, uri, base := remoteGolden(t)
	mustHib(t, dir, "convert", "golden.img", "other.db")

	if out := mustHib(t, dir, "info", uri); !strings.Contains(out, "file format: nbd") || !strings.Contains(out, "(8388608 bytes)") {
		t.Errorf("info of the export:\n%s", out)
	}
	r := hib(t, dir, "create", "-b", uri, "job.db")
	if r.code == 0 || !strings.Contains(r.stderr, "-F nbd") {
		t.Fatalf("create -b URI without -F: exit %d, %q; want a refusal asking for -F nbd", r.code, r.stderr)
	}
	mustHib(t, dir, "create", "-b", uri, "-F", "nbd", "job.db")
	if out := mustHib(t, dir, "info", "job.db"); !strings.Contains(out, "backing file format: nbd") || !strings.Contains(out, "backing file: "+uri) {
		t.Errorf("info of the diff layer:\n%s", out)
	}
	if out := mustHib(t, dir, "cat", "job.db", "/hello.txt"); out != "hello from a golden image\n" {
		t.Errorf("cat through the remote base: %q", out)
	}
	// Local writes land in job.db only.
	stop := startServer(t, dir, "--socket", filepath.Join(dir, "job.sock"), "job.db")
	qemuIO(t, "nbd+unix:///?socket="+filepath.Join(dir, "job.sock"), "write -P 0x42 6M 64k", "read -P 0x42 6M 64k")
	res := stop()
	if res.code != 0 {
		t.Fatalf("serve job.db: exit %d: %s", res.code, res.stderr)
	}
	// At exit serve says what the remote base cost: here only the
	// identity check at open, since qemu-io read back its own write.
	if m := remoteReport.FindStringSubmatch(res.stderr); m == nil || m[1] != uri || m[2] != m[3] || m[4] != "0" {
		t.Errorf("serve's report of the remote base: %q", res.stderr)
	}
	if out := hib(t, dir, "compare", "job.db", "golden.img"); !strings.Contains(out.stdout, "Content mismatch at offset 6291456") {
		t.Errorf("compare after the local write: %+v", out)
	}
	if out := mustHib(t, dir, "check", "job.db"); !strings.Contains(out, "No errors were found") {
		t.Errorf("check: %s", out)
	}

	// The base server goes away: opening fails at once, naming the URI.
	base.Process.Kill()
	base.Wait()
	r = hib(t, dir, "compare", "job.db", "golden.img")
	if r.code == 0 || !strings.Contains(r.stderr, "base.sock") {
		t.Errorf("compare with the base server gone: exit %d, %q", r.code, r.stderr)
	}
	// Another disk served at the same address is refused, not mixed in.
	holdLayer(t, dir, "--read-only", "--socket", sock, "other.db")
	r = hib(t, dir, "compare", "job.db", "golden.img")
	if r.code == 0 || !strings.Contains(r.stderr, "may serve another disk") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("compare with another disk at the base's address: exit %d, %q", r.code, r.stderr)
	}
	// rebase -u accepts it when that is what the user wants.
	mustHib(t, dir, "rebase", "-u", "-b", uri, "-F", "nbd", "job.db")
	if out := hib(t, dir, "compare", "job.db", "golden.img"); out.code == 2 || !strings.Contains(out.stdout, "Content mismatch at offset 6291456") {
		t.Errorf("compare after rebase -u: %+v", out)
	}
	// A remote base's layer moves onto a local copy of the base.
	mustHib(t, dir, "rebase", "-u", "-b", "other.db", "job.db")
	if out := hib(t, dir, "compare", "job.db", "golden.img"); !strings.Contains(out.stdout, "Content mismatch at offset 6291456") {
		t.Errorf("compare after rebase -u onto a local copy: %+v", out)
	}
}

// TestNBDBaseGenerationMoved: a base served read-only by hibdisk is
// identified by its layer's uuid and generation without reading it; once
// the base is written (its generation moves) and served again, a child
// made over its old content is refused.
func TestNBDBaseGenerationMoved(t *testing.T) {
	dir, sock, uri, base := remoteGolden(t)
	mustHib(t, dir, "create", "-b", uri, "-F", "nbd", "job.db")
	base.Process.Kill()
	base.Wait()

	stop := startServer(t, dir, "--socket", filepath.Join(dir, "w.sock"), "golden.db")
	qemuIO(t, "nbd+unix:///?socket="+filepath.Join(dir, "w.sock"), "write -P 0x17 7M 4k")
	if res := stop(); res.code != 0 {
		t.Fatalf("serve golden.db: exit %d: %s", res.code, res.stderr)
	}
	holdLayer(t, dir, "--read-only", "--socket", sock, "golden.db")
	r := hib(t, dir, "compare", "job.db", "golden.img")
	if r.code == 0 || !strings.Contains(r.stderr, "generation") || !strings.Contains(r.stderr, "may serve another disk") {
		t.Fatalf("compare over a base whose generation moved: exit %d, %q", r.code, r.stderr)
	}
	// What the user does when the change is intended.
	mustHib(t, dir, "rebase", "-u", "-b", uri, "-F", "nbd", "job.db")
	mustHib(t, dir, "compare", "job.db", "golden.db")
	// Onto the local base, so the check at the end of the test (after the
	// server is gone) can open the chain.
	mustHib(t, dir, "rebase", "-u", "-b", "golden.db", "job.db")
}

// TestCreateReadCache: a layer made with create --read-cache fills
// itself with what reads fetch from its remote base whenever it is
// served writable, without serve --read-cache; info says so.
func TestCreateReadCache(t *testing.T) {
	dir, _, uri, _ := remoteGolden(t)
	if r := hib(t, dir, "create", "-s", "8M", "--read-cache", "base.db"); r.code == 0 {
		t.Errorf("create --read-cache of a base layer succeeded")
	}
	mustHib(t, dir, "create", "--read-cache", "-b", uri, "-F", "nbd", "cache.db")
	if out := mustHib(t, dir, "info", "cache.db"); !strings.Contains(out, "read cache: yes") || !strings.Contains(out, "data sectors: 0 ") {
		t.Fatalf("info of a new read cache:\n%s", out)
	}
	stop := startServer(t, dir, "--socket", filepath.Join(dir, "c.sock"), "cache.db")
	qemuIO(t, "nbd+unix:///?socket="+filepath.Join(dir, "c.sock"), "read 0 8M")
	if res := stop(); res.code != 0 {
		t.Fatalf("serve cache.db: exit %d: %s", res.code, res.stderr)
	}
	out := mustHib(t, dir, "info", "--json", "cache.db")
	if !strings.Contains(out, `"read-cache": true`) || strings.Contains(out, `"data-sectors": 0,`) {
		t.Errorf("info --json after a whole-disk read through the read cache:\n%s", out)
	}
	// Its view is the base's: the cache holds copies, never changes.
	if out := mustHib(t, dir, "compare", "cache.db", "golden.img"); !strings.Contains(out, "identical") {
		t.Errorf("compare: %s", out)
	}
	mustHib(t, dir, "rebase", "-u", "-b", "golden.db", "cache.db")
}
