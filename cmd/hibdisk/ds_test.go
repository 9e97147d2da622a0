package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// transcript runs command lines and records each with its output and
// exit status, for a golden file.
type transcript struct {
	t   *testing.T
	dir string
	b   strings.Builder
}

func (tr *transcript) run(args ...string) result {
	tr.t.Helper()
	r := hib(tr.t, tr.dir, args...)
	fmt.Fprintf(&tr.b, "$ hibdisk %s\n%s", strings.Join(args, " "), r.stdout)
	if r.stderr != "" {
		fmt.Fprintf(&tr.b, "stderr: %s", r.stderr)
	}
	if r.code != 0 {
		fmt.Fprintf(&tr.b, "exit %d\n", r.code)
	}
	return r
}

// expect runs a command that must exit with code.
func (tr *transcript) expect(code int, args ...string) {
	tr.t.Helper()
	if r := tr.run(args...); r.code != code {
		tr.t.Errorf("hibdisk %s: exit %d, want %d (stderr %q)", strings.Join(args, " "), r.code, code, r.stderr)
	}
}

func TestDSTranscript(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	tr := &transcript{t: t, dir: dir}
	tr.expect(0, "ds", "subscribe", "--owner", "watcher", "--once", "base.db", `svc\..*`)
	tr.expect(0, "ds", "publish", "--owner", "agent", "base.db", "u32", "svc.count", "42")
	tr.expect(0, "ds", "publish", "--owner", "agent", "base.db", "string", "svc.name", "hello world")
	tr.expect(0, "ds", "publish", "--owner", "agent", "--hex", "base.db", "mem", "svc.blob", "00ff10")
	tr.expect(0, "ds", "publish", "--owner", "agent", "--private", "base.db", "string", "svc.secret", "s3cr3t")
	tr.expect(0, "ds", "publish", "--owner", "rs", "base.db", "label", "tty", "7")
	tr.expect(0, "ds", "publish", "--owner", "vmm", "base.db", "map", "ring", "disk:0:16")
	tr.expect(0, "ds", "list", "base.db")
	tr.expect(0, "ds", "list", "--owner", "agent", "--json", "base.db")
	tr.expect(0, "ds", "retrieve", "base.db", "u32", "svc.count")
	tr.expect(0, "ds", "retrieve", "base.db", "string", "svc.name")
	tr.expect(0, "ds", "retrieve", "--hex", "base.db", "mem", "svc.blob")
	tr.expect(0, "ds", "retrieve", "--hex", "--max", "2", "base.db", "mem", "svc.blob")
	tr.expect(0, "ds", "retrieve", "base.db", "label", "tty")
	tr.expect(0, "ds", "retrieve", "--number", "base.db", "label", "7")
	tr.expect(0, "ds", "retrieve", "--owner", "agent", "base.db", "string", "svc.secret")
	tr.expect(0, "ds", "snapshot", "--owner", "vmm", "base.db", "ring")
	tr.expect(0, "ds", "retrieve", "--hex", "--snapshot", "1", "base.db", "map", "ring")
	tr.expect(0, "ds", "retrieve", "--json", "base.db", "u32", "svc.count")
	tr.expect(0, "ds", "subscribe", "--owner", "watcher", "--once", "base.db", `svc\..*`)
	tr.expect(0, "ds", "publish", "--owner", "agent", "--overwrite", "base.db", "u32", "svc.count", "43")
	tr.expect(0, "ds", "delete", "--owner", "agent", "base.db", "mem", "svc.blob")
	tr.expect(0, "ds", "subscribe", "--owner", "watcher", "--once", "--json", "base.db", `svc\..*`)
	tr.expect(0, "ds", "subscribe", "--owner", "late", "--initial", "--type", "label,map", "--once", "base.db", ".*")

	// Invalid invocations: one line on stderr, exit 1 for a refused
	// operation, 2 for bad usage.
	tr.expect(1, "ds", "publish", "--owner", "agent", "base.db", "u32", "svc.count", "1")
	tr.expect(1, "ds", "delete", "--owner", "agent", "base.db", "u32", "missing")
	tr.expect(1, "ds", "delete", "--owner", "intruder", "base.db", "u32", "svc.count")
	tr.expect(1, "ds", "retrieve", "--max", "5", "base.db", "string", "svc.name")
	tr.expect(1, "ds", "retrieve", "--owner", "intruder", "base.db", "string", "svc.secret")
	tr.expect(1, "ds", "publish", "--owner", "intruder", "--overwrite", "base.db", "string", "svc.secret", "x")
	tr.expect(1, "ds", "publish", "--owner", "rs", "base.db", "label", "console", "7")
	tr.expect(1, "ds", "publish", "--owner", "vmm", "--overwrite", "base.db", "map", "ring", "disk:0:16")
	tr.expect(1, "ds", "publish", "base.db", "map", "far", "disk:1M:1")
	tr.expect(1, "ds", "retrieve", "base.db", "map", "ring", "--snapshot", "9")
	tr.expect(1, "ds", "subscribe", "--owner", "watcher", "--once", "base.db", "other")
	tr.expect(1, "ds", "subscribe", "--once", "base.db", "(")
	tr.expect(1, "ds", "list", "missing.db")
	tr.expect(2, "ds")
	tr.expect(2, "ds", "frobnicate", "base.db")
	tr.expect(2, "ds", "publish", "base.db", "float", "k", "1")
	tr.expect(2, "ds", "publish", "base.db", "u32", "k", "4294967296")
	tr.expect(2, "ds", "publish", "base.db", "u32", "k")
	tr.expect(2, "ds", "publish", "base.db", "map", "k", "disk:0")
	tr.expect(2, "ds", "retrieve", "--number", "base.db", "u32", "k")
	golden(t, "ds.txt", tr.b.String())
}

// TestDSSubscriberRestart: `ds subscribe` stopped and run again with the
// same owner and pattern resumes: it reports what changed while it was
// down, and nothing it reported before.
func TestDSSubscriberRestart(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	mustHib(t, dir, "ds", "publish", "base.db", "u32", "a", "1")
	if got := mustHib(t, dir, "ds", "subscribe", "--owner", "w", "--initial", "--once", "base.db", ".*"); got != "changed u32 a -\n" {
		t.Errorf("first run = %q", got)
	}
	mustHib(t, dir, "ds", "publish", "base.db", "u32", "b", "2")
	mustHib(t, dir, "ds", "publish", "--overwrite", "base.db", "u32", "a", "3")
	if got := mustHib(t, dir, "ds", "subscribe", "--owner", "w", "--initial", "--once", "base.db", ".*"); got != "changed u32 b -\nchanged u32 a -\n" {
		t.Errorf("after restart = %q", got)
	}
	if got := mustHib(t, dir, "ds", "subscribe", "--owner", "w", "--once", "base.db", ".*"); got != "" {
		t.Errorf("third run = %q, want nothing", got)
	}
	// A different pattern needs --overwrite, which starts afresh.
	if r := hib(t, dir, "ds", "subscribe", "--owner", "w", "--once", "base.db", "a"); r.code != 1 {
		t.Errorf("changed pattern without --overwrite: exit %d", r.code)
	}
	if got := mustHib(t, dir, "ds", "subscribe", "--owner", "w", "--overwrite", "--initial", "--once", "base.db", "a"); got != "changed u32 a -\n" {
		t.Errorf("overwritten subscription = %q", got)
	}
}

// TestDSDiffLayer: entries of the base show through a diff layer; a
// deletion in the diff layer hides the base's entry without changing the
// base.
func TestDSDiffLayer(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	mustHib(t, dir, "ds", "publish", "base.db", "string", "cfg", "base")
	mustHib(t, dir, "ds", "publish", "base.db", "u32", "gone", "1")
	mustHib(t, dir, "create", "-b", "base.db", "job.db")
	mustHib(t, dir, "ds", "publish", "--overwrite", "job.db", "string", "cfg", "job")
	mustHib(t, dir, "ds", "delete", "job.db", "u32", "gone")
	if got := mustHib(t, dir, "ds", "retrieve", "job.db", "string", "cfg"); got != "job\n" {
		t.Errorf("job cfg = %q", got)
	}
	if got := mustHib(t, dir, "ds", "retrieve", "base.db", "string", "cfg"); got != "base\n" {
		t.Errorf("base cfg = %q", got)
	}
	if r := hib(t, dir, "ds", "retrieve", "job.db", "u32", "gone"); r.code != 1 {
		t.Errorf("deleted entry through the diff layer: exit %d", r.code)
	}
	mustHib(t, dir, "ds", "retrieve", "base.db", "u32", "gone")
}

// TestDSWhileServing: while `hibdisk serve` runs, a subscriber process
// sees what a third process publishes, and the served layer keeps taking
// guest writes (publishes go through the server: a commit from another
// process would make the server's next write fail).
func TestDSWhileServing(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	bin := hibdiskBinary(t)
	dir := testDir(t)
	layer := filepath.Join(dir, "live.db")
	mustHib(t, dir, "create", "-s", "4M", "live.db")
	sock := filepath.Join(dir, "nbd.sock")
	uri := "nbd+unix:///?socket=" + sock
	server := exec.Command(bin, "serve", "--nbd", "--socket", sock, layer)
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		server.Process.Signal(os.Interrupt)
		if err := server.Wait(); err != nil {
			t.Errorf("serve: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "live.ds.sock")); !os.IsNotExist(err) {
			t.Errorf("datastore socket left behind: %v", err)
		}
	}()
	waitForSocket(t, sock, nil)
	waitForSocket(t, filepath.Join(dir, "live.ds.sock"), nil)

	guest := startQemuIO(t, uri)

	// Subscribe first (through the server, as the socket exists), so
	// the follower started next resumes a subscription that exists
	// before anything is published.
	mustHib(t, dir, "ds", "subscribe", "--owner", "w", "--once", "live.db", `k.*`)
	sub := exec.Command(bin, "ds", "subscribe", "--owner", "w", layer, `k.*`)
	out, err := sub.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	sub.Stderr = os.Stderr
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sub.Process.Signal(os.Interrupt)
		if err := sub.Wait(); err != nil {
			t.Errorf("subscribe: %v", err)
		}
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var worst time.Duration
	const rounds = 10
	for i := range rounds {
		guest("read 0 4k")
		pub := exec.Command(bin, "ds", "publish", "--overwrite", layer, "u32", fmt.Sprintf("k%d", i), fmt.Sprint(i))
		if o, err := pub.CombinedOutput(); err != nil {
			t.Fatalf("publish: %v: %s", err, o)
		}
		published := time.Now()
		select {
		case line := <-lines:
			if want := fmt.Sprintf("changed u32 k%d -", i); line != want {
				t.Errorf("subscriber printed %q, want %q", line, want)
			}
			worst = max(worst, time.Since(published))
		case <-time.After(10 * time.Second):
			t.Fatalf("subscriber did not see k%d", i)
		}
		// The guest, connected throughout, keeps writing: its read before
		// the next publish leaves the server's read transaction open,
		// which a commit from another process would make stale.
		guest(fmt.Sprintf("write -P %d %d 4k", i+1, i*4096))
		guest(fmt.Sprintf("read -P %d %d 4k", i+1, i*4096))
	}
	t.Logf("%d publishes from a third process: the subscriber printed each within %v of the publisher's exit", rounds, worst)
}

// TestDSDiff: `hibdisk diff` lists the datastore entries that differ
// between two layers, and they alone make the images differ.
func TestDSDiff(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	mustHib(t, dir, "ds", "publish", "base.db", "u32", "kept", "1")
	mustHib(t, dir, "ds", "publish", "base.db", "string", "cfg", "a")
	mustHib(t, dir, "ds", "publish", "base.db", "mem", "old", "x")
	mustHib(t, dir, "create", "-b", "base.db", "job.db")
	if r := hib(t, dir, "diff", "base.db", "job.db"); r.code != 0 || !strings.Contains(r.stdout, "datastore: identical\n") {
		t.Errorf("diff before changes: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	mustHib(t, dir, "ds", "publish", "--overwrite", "job.db", "string", "cfg", "b")
	mustHib(t, dir, "ds", "delete", "job.db", "mem", "old")
	mustHib(t, dir, "ds", "publish", "job.db", "label", "new", "3")
	r := hib(t, dir, "diff", "base.db", "job.db")
	if r.code != 1 || !strings.HasSuffix(r.stdout, "datastore: 3 entries differ\n  ~ string cfg\n  + label new\n  - mem old\n") {
		t.Errorf("diff: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = hib(t, dir, "diff", "--json", "base.db", "job.db")
	want := `"datastore": [
    {
      "key": "cfg",
      "type": "string",
      "change": "changed"
    },`
	if r.code != 1 || !strings.Contains(r.stdout, want) {
		t.Errorf("diff --json: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// startQemuIO keeps one qemu-io connected to uri and returns a function
// that runs one command on it and fails the test if the command fails.
func startQemuIO(t *testing.T, uri string) func(cmd string) {
	t.Helper()
	q := exec.Command("qemu-io", "-f", "raw", uri)
	in, err := q.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := q.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	q.Stderr = q.Stdout
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		fmt.Fprintln(in, "quit")
		in.Close()
		q.Wait()
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return func(cmd string) {
		t.Helper()
		fmt.Fprintln(in, cmd)
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("qemu-io exited during %q", cmd)
				}
				if strings.Contains(line, "failed") || strings.Contains(line, "error") {
					t.Fatalf("qemu-io %q: %s", cmd, line)
				}
				if strings.Contains(line, "bytes at offset") {
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("qemu-io %q: no answer", cmd)
			}
		}
	}
}
