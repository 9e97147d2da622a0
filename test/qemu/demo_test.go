package qemu_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
)

// requireDemoTools checks what scripts/run-demo.sh and scripts/demo.sh ask
// scripts/deps.sh for, so that deps.sh has nothing to install.
func requireDemoTools(t *testing.T) {
	t.Helper()
	guestKit(t) // QEMU, apt, dpkg; and the kit is built within the test's limits
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	testenv.RequireTools(t, "sqlite3", "sqlite3")
	testenv.RequireTools(t, "xz-utils", "xz")
}

// scriptCmd is one of the scripts run in its own process group, so that
// a timeout ends it and everything it started.
func scriptCmd(ctx context.Context, t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), append([]string{"HIBDISK=" + bin}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// TestMakeDemo runs scripts/demo.sh (make demo) end to end: it must exit
// 0 well within its two minutes and tell the whole story: boot, the
// guest's writes, hibernate, resume where the guest stopped, the diff and
// the sqlite3 queries; and leave its layers and consoles in its directory.
func TestMakeDemo(t *testing.T) {
	requireDemoTools(t)
	dir := t.TempDir()
	// Two minutes is the promise on an idle machine; tests share two
	// cores, so the limit here is looser and the time is logged.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := scriptCmd(ctx, t, []string{"HIBDISK_DEMO_DIR=" + dir}, "bash", "scripts/demo.sh")
	cmd.Stdout, cmd.Stderr = &out, &out
	started := time.Now()
	err := cmd.Run()
	t.Logf("scripts/demo.sh took %v", time.Since(started).Round(100*time.Millisecond))
	if err != nil {
		t.Fatalf("scripts/demo.sh: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"==> A golden base: mkfs.ext4",
		"$ hibdisk create -b golden.db job.db",
		"==> Boot: hibdisk vm run starts QEMU (-accel tcg",
		"hibdisk-guest: count 10",
		"$ hibdisk vm hibernate job.db",
		"hibernated into job.db: snapshot 1",
		"$ hibdisk cat job.db /ticks | tail -n 3",
		"==> Resume:",
		"same process, same open file, no reboot",
		"hibernated into r1.db: snapshot 1",
		"$ hibdisk diff job.db r1.db",
		"~ /ticks: size, mtime",
		"$ sqlite3 -readonly -header -column r1.db",
		"disk_sectors  disk_bytes  ram_blocks  ram_bytes",
		"pc-i440fx",
		"==> Done in ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the narration lacks %q", want)
		}
	}
	if strings.Contains(text, "FAILED") {
		t.Errorf("the narration reports a failure")
	}
	for _, f := range []string{"golden.db", "job.db", "r1.db", "run.log", "resume.log"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("the demo left no %s: %v", f, err)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", text)
	}
}

// TestMakeDemoFailsInOneLine: a step that fails ends the demo with a
// non-zero status and one line naming the step.
func TestMakeDemoFailsInOneLine(t *testing.T) {
	requireDemoTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := scriptCmd(ctx, t, []string{"HIBDISK_DEMO_DIR=" + t.TempDir(), "HIBDISK=/bin/false"}, "bash", "scripts/demo.sh")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("scripts/demo.sh with a failing hibdisk: %v, want a non-zero exit\n%s%s", err, stdout.String(), stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if got, want := lines[len(lines)-1], "demo: FAILED: hibdisk convert golden.img golden.db exited with status 1"; got != want {
		t.Errorf("last line on stderr %q, want %q", got, want)
	}
	if n := strings.Count(stderr.String(), "FAILED"); n != 1 {
		t.Errorf("%d FAILED lines, want one:\n%s", n, stderr.String())
	}
}

// lineLog collects the lines of a reader.
type lineLog struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func newLineLog(r io.Reader) *lineLog {
	l := &lineLog{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, strings.TrimRight(sc.Text(), "\r"))
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *lineLog) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// wait polls until match accepts a line, the reader ends, or d passes.
func (l *lineLog) wait(d time.Duration, match func(string) bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, line := range l.Lines() {
			if match(line) {
				return true
			}
		}
		select {
		case <-l.done:
			for _, line := range l.Lines() {
				if match(line) {
					return true
				}
			}
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return false
}

// printedQEMUCommand is the QEMU command run-demo.sh prints: the line
// that starts with qemu-system-x86_64 and its continuation lines, as a
// user would paste it into a shell.
func printedQEMUCommand(lines []string) string {
	var cmd []string
	for _, line := range lines {
		if len(cmd) == 0 && !strings.HasPrefix(strings.TrimSpace(line), "qemu-system-x86_64 ") {
			continue
		}
		cmd = append(cmd, line)
		if !strings.HasSuffix(line, `\`) {
			break
		}
	}
	return strings.Join(cmd, "\n")
}

// TestMakeRunBoots runs scripts/run-demo.sh (make run), pastes the QEMU
// command it prints into bash and checks that the test guest boots from
// the served layer and appends to /ticks on its ext4; after the server
// stops, the ticks are in the diff layer.
func TestMakeRunBoots(t *testing.T) {
	requireDemoTools(t)
	testenv.RequireTools(t, "libnbd-bin", "nbdinfo")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv := scriptCmd(ctx, t, []string{"HIBDISK_RUN_DIR=" + dir}, "bash", "scripts/run-demo.sh")
	pr, pw := io.Pipe()
	srv.Stdout, srv.Stderr = pw, pw
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	srvDone := make(chan error, 1)
	go func() { err := srv.Wait(); pw.Close(); srvDone <- err }()
	t.Cleanup(func() {
		syscall.Kill(-srv.Process.Pid, syscall.SIGKILL)
		<-srvDone
	})
	banner := newLineLog(pr)
	if !banner.wait(3*time.Minute, func(l string) bool { return strings.HasPrefix(l, "Serving;") }) {
		t.Fatalf("run-demo.sh is not serving\n%s", strings.Join(banner.Lines(), "\n"))
	}
	qemuCmd := printedQEMUCommand(banner.Lines())
	if !strings.Contains(qemuCmd, "-accel tcg") || !strings.Contains(qemuCmd, filepath.Join(dir, "nbd.sock")) {
		t.Fatalf("printed QEMU command:\n%s", qemuCmd)
	}
	t.Logf("pasting:\n%s", qemuCmd)

	q := exec.CommandContext(ctx, "bash", "-c", qemuCmd)
	q.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	q.Cancel = func() error { return syscall.Kill(-q.Process.Pid, syscall.SIGKILL) }
	q.WaitDelay = 10 * time.Second
	qr, qw := io.Pipe()
	q.Stdout, q.Stderr = qw, qw
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	qDone := make(chan error, 1)
	go func() { err := q.Wait(); qw.Close(); qDone <- err }()
	console := newLineLog(qr)
	booted := console.wait(guestTimeout, func(l string) bool {
		n, ok := guestproto.ParseCount(l)
		return (ok && n >= 3) || strings.Contains(l, guestproto.Fail)
	})
	syscall.Kill(-q.Process.Pid, syscall.SIGKILL)
	<-qDone
	lines := console.Lines()
	if n, _ := lastCount(lines); !booted || n < 3 {
		t.Fatalf("the pasted command did not boot the guest to count 3\nconsole:\n%s", tail(lines, 30))
	}

	// Ctrl-C on the server flushes job.db and exits 0.
	if err := syscall.Kill(srv.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-srvDone:
		srvDone <- err // for the cleanup
		if err != nil {
			t.Errorf("hibdisk serve after Ctrl-C: %v\n%s", err, tail(banner.Lines(), 10))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("hibdisk serve still running 30 s after Ctrl-C")
	}
	ticks := hibdisk(t, "cat", filepath.Join(dir, "job.db"), "/ticks")
	if !strings.HasPrefix(ticks, "tick 1\ntick 2\ntick 3\n") {
		t.Errorf("job.db's /ticks after the run: %q", ticks)
	}
	checkLayer(t, filepath.Join(dir, "job.db"))
	checkLayer(t, filepath.Join(dir, "golden.db"))
}
