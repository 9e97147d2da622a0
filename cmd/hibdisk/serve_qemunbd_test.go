package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// Tests of what serve takes from qemu-nbd (-r, -x, -k, -p/-b, -t,
// --fork, --pid-file, sd_notify) and of serve --json.

// nbdinfo runs nbdinfo with args and returns its output and error.
func nbdinfo(t *testing.T, args ...string) (string, error) {
	t.Helper()
	testenv.RequireTools(t, "libnbd-bin", "nbdinfo")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nbdinfo", args...).CombinedOutput()
	return string(out), err
}

// TestServeSdNotify: with NOTIFY_SOCKET set, serve sends READY=1 (with a
// STATUS naming the URI) on that unix datagram socket once it listens,
// and STOPPING=1 when it shuts down; a path and an abstract (@) name
// both work.
func TestServeSdNotify(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run("abstract="+strconv.FormatBool(abstract), func(t *testing.T) {
			dir := testDir(t)
			mustHib(t, dir, "create", "-s", "1M", "a.db")
			name := filepath.Join(dir, "notify")
			if abstract {
				name = "@hibdisk-test-notify-" + strconv.Itoa(os.Getpid())
			}
			addr := &net.UnixAddr{Name: strings.Replace(name, "@", "\x00", 1), Net: "unixgram"}
			c, err := net.ListenUnixgram("unixgram", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			t.Setenv("NOTIFY_SOCKET", name)
			sock := filepath.Join(dir, "a.sock")
			stop := startServer(t, dir, "--socket", sock, "a.db")
			read := func() string {
				t.Helper()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 4096)
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("no notification: %v", err)
				}
				return string(buf[:n])
			}
			ready := read()
			if !strings.HasPrefix(ready, "READY=1\n") || !strings.Contains(ready, "STATUS=serving 1 export(s) at nbd+unix:///?socket="+sock) {
				t.Errorf("readiness: %q", ready)
			}
			if _, err := nbdinfo(t, "--size", "nbd+unix:///?socket="+sock); err != nil {
				t.Errorf("nbdinfo after READY=1: %v", err)
			}
			if r := stop(); r.code != 0 {
				t.Fatalf("serve: exit %d: %s", r.code, r.stderr)
			}
			if got := read(); got != "STOPPING=1" {
				t.Errorf("at shutdown: %q, want STOPPING=1", got)
			}
		})
	}
}

// TestServePersistent: like qemu-nbd, serve --persistent=false exits 0
// after its last client disconnects (a second nbdinfo finds no server,
// and the socket is gone); with -t (the default) it serves both.
func TestServePersistent(t *testing.T) {
	for _, persistent := range []string{"-t", "--persistent=false"} {
		t.Run(persistent, func(t *testing.T) {
			dir := testDir(t)
			mustHib(t, dir, "create", "-s", "1M", "a.db")
			sock := filepath.Join(dir, "a.sock")
			t.Chdir(dir)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out, errOut syncBuffer
			done := make(chan int, 1)
			go func() {
				done <- run(ctx, []string{"serve", "--nbd", persistent, "--socket", sock, "a.db"}, &env{stdout: &out, stderr: &errOut})
			}()
			waitForSocket(t, sock, done)
			uri := "nbd+unix:///?socket=" + sock
			if got, err := nbdinfo(t, "--size", uri); err != nil || strings.TrimSpace(got) != "1048576" {
				t.Fatalf("first nbdinfo: %v: %s", err, got)
			}
			if persistent == "-t" {
				if got, err := nbdinfo(t, "--size", uri); err != nil {
					t.Fatalf("second nbdinfo with -t: %v: %s", err, got)
				}
				cancel()
				if code := <-done; code != 0 {
					t.Fatalf("serve -t: exit %d: %s", code, errOut.String())
				}
				return
			}
			select {
			case code := <-done:
				if code != 0 {
					t.Fatalf("serve --persistent=false: exit %d: %s", code, errOut.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatal("serve --persistent=false still running 20s after its only client left")
			}
			if _, err := nbdinfo(t, "--size", uri); err == nil {
				t.Error("second nbdinfo connected to a server that should have exited")
			}
			if _, err := os.Stat(sock); !os.IsNotExist(err) {
				t.Errorf("socket left behind (stat: %v)", err)
			}
			if !strings.Contains(out.String(), "exits when the last client disconnects") {
				t.Errorf("banner does not say it exits after the last client:\n%s", out.String())
			}
		})
	}
}

// TestServeFork: serve --fork exits 0 once the server is ready, having
// printed the banner; the pid file names the server, which serves the
// export read-only under -x's name on -k's socket; after SIGTERM the pid
// file and socket are gone. A server that cannot listen makes --fork
// exit 1 with the error in one line.
func TestServeFork(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "a.db")
	r := runBinary(t, dir, "serve", "--nbd", "--fork", "--pid-file", "s.pid", "-r", "-x", "foo", "-k", "s.sock", "a.db")
	if r.code != 0 || !strings.Contains(r.stdout, "Serving;") {
		t.Fatalf("serve --fork: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	pidText, err := os.ReadFile(filepath.Join(dir, "s.pid"))
	if err != nil {
		t.Fatalf("pid file not written before --fork returned: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidText)))
	if err != nil {
		t.Fatalf("pid file %q: %v", pidText, err)
	}
	daemon, _ := os.FindProcess(pid)
	t.Cleanup(func() { daemon.Signal(syscall.SIGKILL) })
	uri := "nbd+unix:///foo?socket=" + filepath.Join(dir, "s.sock")
	if got, err := nbdinfo(t, "--size", uri); err != nil || strings.TrimSpace(got) != "1048576" {
		t.Fatalf("nbdinfo %s: %v: %s", uri, err, got)
	}
	if got, err := nbdinfo(t, "--is", "readonly", uri); err != nil {
		t.Errorf("-r: export is not read-only: %v %s", err, got)
	}
	if err := daemon.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("daemon still running 20s after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, left := range []string{"s.pid", "s.sock"} {
		if _, err := os.Stat(filepath.Join(dir, left)); !os.IsNotExist(err) {
			t.Errorf("%s left after a clean exit (stat: %v)", left, err)
		}
	}

	r = runBinary(t, dir, "serve", "--nbd", "--fork", "--pid-file", "s.pid", "-k", "no/such/dir/s.sock", "a.db")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "no/such/dir/s.sock") {
		t.Errorf("serve --fork that cannot listen: exit %d, stderr %q; want exit 1 and one line naming the socket", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "s.pid")); !os.IsNotExist(err) {
		t.Errorf("pid file written by a server that never became ready (stat: %v)", err)
	}
}

// normalizeRun replaces what differs from run to run in JSON output:
// the test directory, QEMU's private directory and process ids.
func normalizeRun(s, dir string) string {
	s = strings.ReplaceAll(s, dir, "DIR")
	s = regexp.MustCompile(`[^"=]*/hibdisk-vm-[0-9]+`).ReplaceAllString(s, "VMDIR")
	s = regexp.MustCompile(`"(pid|qemu_pid)":[0-9]+`).ReplaceAllString(s, `"$1":PID`)
	return regexp.MustCompile(`127\.0\.0\.1:[0-9]+`).ReplaceAllString(s, "127.0.0.1:PORT")
}

// TestServeJSON: serve --json (and --output=json) prints one JSON line,
// and nothing else on stdout, with the URI, socket or address, exports
// and pid; a client connects to the printed URI. The shapes are golden.
func TestServeJSON(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "a.db")
	mustHib(t, dir, "create", "-s", "2M", "b.db")
	sock := filepath.Join(dir, "a.sock")
	r := startServer(t, dir, "--json", "--socket", sock, "-x", "foo", "--export", "bar=b.db", "a.db")()
	if r.code != 0 || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("serve --json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	got := normalizeRun(r.stdout, dir)
	if !strings.Contains(got, `"pid":PID`) {
		t.Errorf("no pid: %s", r.stdout)
	}

	// TCP, with qemu-nbd's -b and -p; the printed URI works.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--nbd", "--output=json", "-r", "-b", "127.0.0.1", "-p", "0", "a.db"}, &env{stdout: &out, stderr: &errOut})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "\n") {
		if time.Now().After(deadline) {
			t.Fatalf("no JSON line within 10s; stderr: %s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var ready serveJSON
	if err := json.Unmarshal([]byte(out.String()), &ready); err != nil {
		t.Fatalf("%v: %q", err, out.String())
	}
	if size, err := nbdinfo(t, "--size", ready.URI); err != nil || strings.TrimSpace(size) != "1048576" {
		t.Errorf("nbdinfo %s: %v %s", ready.URI, err, size)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve: exit %d: %s", code, errOut.String())
	}
	golden(t, "serve-json.golden", got+normalizeRun(out.String(), dir))
}

// TestJSONErrors: a command asked for JSON (--json or --output=json)
// reports failures as one JSON object on stderr with the exit status,
// for bad usage (2) and failed operations (1) alike; without it the
// usual one line. Golden.
func TestJSONErrors(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "a.db")
	var got strings.Builder
	for _, args := range [][]string{
		{"serve", "--nbd", "--json", "missing.db"},
		{"serve", "--nbd", "--output=json", "--bogus", "a.db"},
		{"serve", "--nbd", "--output", "json", "--socket", "x.sock", "--listen", ":1", "a.db"},
		{"serve", "--nbd", "--output=yaml", "a.db"},
		{"serve", "--nbd", "-p", "1", "--listen", ":2", "a.db"},
		{"vm", "resume", "--json", "missing.db"},
		{"vm", "run", "--json", "a.db"},
		{"vm", "run", "--json", "--boot", "missing.db"},
	} {
		r := hib(t, dir, args...)
		if r.code == 0 || strings.Count(r.stderr, "\n") != 1 || r.stdout != "" {
			t.Errorf("hibdisk %s: exit %d, stdout %q, stderr %q; want a failure in one line", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		if wantsJSON(args) {
			var e jsonError
			if err := json.Unmarshal([]byte(r.stderr), &e); err != nil || e.Exit != r.code || e.Error == "" {
				t.Errorf("hibdisk %s: stderr %q is not {error, exit: %d}", strings.Join(args, " "), r.stderr, r.code)
			}
		}
		got.WriteString("$ hibdisk " + strings.Join(args, " ") + "\n" + normalizeRun(r.stderr, dir))
	}
	golden(t, "json-errors.golden", got.String())
}

// TestWantsJSON: which command lines ask for JSON.
func TestWantsJSON(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{[]string{"--json", "a"}, true},
		{[]string{"a", "-json"}, true},
		{[]string{"--json=true", "a"}, true},
		{[]string{"--json=false", "a"}, false},
		{[]string{"--output=json"}, true},
		{[]string{"--output", "json"}, true},
		{[]string{"-output", "human"}, false},
		{[]string{"--", "--json"}, false},
		{[]string{"json", "output"}, false},
	} {
		if got := wantsJSON(c.args); got != c.want {
			t.Errorf("wantsJSON(%q) = %v, want %v", c.args, got, c.want)
		}
	}
}
