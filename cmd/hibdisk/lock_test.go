package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// holdLayer starts a real `hibdisk serve` process (args after "serve
// --nbd") in dir and returns it once it serves; the test kills it at the
// end.
func holdLayer(t *testing.T, dir string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(hibdiskBinary(t), append([]string{"serve", "--nbd"}, args...)...)
	cmd.Dir = dir
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Serving;") {
				ready <- true
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("hibdisk serve %v exited before serving", args)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("hibdisk serve %v did not start", args)
	}
	return cmd
}

// runBinary runs the built hibdisk in dir with a deadline: a writer that
// is not refused may serve forever.
func runBinary(t *testing.T, dir string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hibdiskBinary(t), args...)
	cmd.Dir = dir
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ctx.Err() != nil {
		code = -1
	} else if err != nil {
		code = cmd.ProcessState.ExitCode()
	}
	return result{out.String(), errOut.String(), code}
}

// TestWritersRefuseHeldLayer runs every command that writes a layer
// against every kind of holder of that layer in another process: each is
// refused with one line naming the holder, and the readers still work.
// Before layer locks, commit while served lost flushed writes, a second
// serve acknowledged writes it then lost, and resize --shrink of a served
// layer let the server write past the new end.
func TestWritersRefuseHeldLayer(t *testing.T) {
	holders := []struct {
		name string
		args []string
		says string
	}{
		{"served writable", []string{"--socket", "h.sock", "top.db"}, "is being written by pid"},
		{"served read-only", []string{"--read-only", "--socket", "h.sock", "top.db"}, "held open by a user that needs it unchanged by pid"},
		{"parent of a served chain", []string{"--socket", "h.sock", "child.db"}, "held open by a user that needs it unchanged by pid"},
	}
	writers := [][]string{
		{"serve", "--nbd", "--socket", "w.sock", "top.db"},
		{"commit", "top.db"},
		{"commit", "sibling.db"}, // into top.db
		{"rebase", "-u", "-b", "base.db", "top.db"},
		{"rebase", "-b", "base.db", "top.db"},
		{"hib", "import", filepath.Join(testdata, "hib-after.json"), "top.db"},
		{"hib", "capture", "--no-freeze", "--pid", "SLEEPER", "top.db"},
		{"resize", "--shrink", "top.db", "512K"},
		{"check", "--repair", "top.db"},
		{"compact", "top.db"},
		{"seal", "top.db"},
		{"vm", "run", "--kernel", "no-kernel-needed", "top.db"},
	}
	readers := [][]string{{"info", "top.db"}, {"map", "top.db"}, {"check", "top.db"}, {"compare", "top.db", "top.db"}}
	// hib capture needs a process to capture: a small one.
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	for _, w := range writers {
		for i, a := range w {
			if a == "SLEEPER" {
				w[i] = strconv.Itoa(sleeper.Process.Pid)
			}
		}
	}
	for _, h := range holders {
		t.Run(h.name, func(t *testing.T) {
			dir := testDir(t)
			mustHib(t, dir, "create", "-s", "1M", "base.db")
			mustHib(t, dir, "create", "-b", "base.db", "top.db")
			mustHib(t, dir, "create", "-b", "top.db", "child.db")
			mustHib(t, dir, "create", "-b", "top.db", "sibling.db")
			before := fileDigest(t, filepath.Join(dir, "top.db"))
			holder := holdLayer(t, dir, h.args...)
			for _, w := range writers {
				r := runBinary(t, dir, w...)
				if r.code <= 0 || !strings.Contains(r.stderr, h.says) || !strings.Contains(r.stderr, "hibdisk serve") ||
					strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
					t.Errorf("hibdisk %s while %s: exit %d, stderr %q; want one line saying %q naming the holder",
						strings.Join(w, " "), h.name, r.code, r.stderr, h.says)
				}
			}
			for _, rd := range readers {
				if r := runBinary(t, dir, rd...); r.code != 0 {
					t.Errorf("hibdisk %s while %s: exit %d, stderr %q; readers work on a layer in use",
						strings.Join(rd, " "), h.name, r.code, r.stderr)
				}
			}
			// kill -9 frees the layer: the kernel drops the dead holder's locks.
			holder.Process.Kill()
			holder.Wait()
			if got := fileDigest(t, filepath.Join(dir, "top.db")); got != before && h.name != "served writable" {
				t.Errorf("a refused writer changed top.db")
			}
			mustHib(t, dir, "commit", "child.db") // writes top.db
			// which changes the base under sibling.db: caught, and
			// accepted by rebase -u.
			if r := hib(t, dir, "check", "sibling.db"); r.code == 0 || !strings.Contains(r.stdout+r.stderr, "generation") {
				t.Errorf("check of a layer whose parent a commit changed: exit %d, %s%s; want a problem naming the generation", r.code, r.stdout, r.stderr)
			}
			mustHib(t, dir, "rebase", "-u", "-b", "top.db", "sibling.db")
			os.Remove(filepath.Join(dir, "h.sock"))
		})
	}
}

// TestServeMarkedReadOnly: a layer marked read-only (a hibernated
// snapshot) is exported read-only, not writable with every write failing
// EPERM.
func TestServeMarkedReadOnly(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "snap.db")
	f, err := sqlitelayer.Open(filepath.Join(dir, "snap.db"), sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetReadOnly(true); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	stop := startServer(t, dir, "--socket", sock, "snap.db")
	// While it is served, nobody may write it.
	if r := hib(t, dir, "resize", "snap.db", "2M"); r.code == 0 {
		t.Errorf("resize of a layer exported read-only succeeded")
	}
	res := stop()
	if !strings.Contains(res.stdout, "(read-only)") {
		t.Errorf("banner does not say the export is read-only:\n%s", res.stdout)
	}
}

// TestReadOnlyFilesystem: a layer on a read-only filesystem opens
// read-only for every read-only use (before, even info failed with
// "PRAGMA synchronous=FULL: unable to open database file"), and writers
// say why they cannot write.
func TestReadOnlyFilesystem(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to bind-mount a directory read-only (CI runs as root)")
	}
	// dir is not a testDir: its cleanup check would run after the
	// unmount; the test checks job.db itself.
	src, dir := testDir(t), t.TempDir()
	mustHib(t, src, "create", "-s", "1M", "base.db")
	mustHib(t, src, "create", "-b", "base.db", "top.db")
	mustHib(t, src, "resize", "top.db", "1M") // a committed write in the top
	ro := filepath.Join(dir, "ro")
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--bind", src, ro}, {"-o", "remount,ro,bind", ro}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("umount", ro).Run() })
	top := filepath.Join(ro, "top.db")
	for _, args := range [][]string{
		{"info", top}, {"map", top}, {"check", top}, {"compare", top, filepath.Join(ro, "base.db")},
		{"ds", "list", top}, // the datastore's own reader connection too
		{"create", "-b", top, "job.db"},
		{"convert", top, "copy.db"},
	} {
		mustHib(t, dir, args...)
	}
	mustHib(t, dir, "map", "job.db")
	mustHib(t, dir, "check", "job.db")
	mustHib(t, dir, "compare", "copy.db", top)
	stop := startServer(t, dir, "--socket", filepath.Join(dir, "s.sock"), "--read-only", top)
	if res := stop(); res.code != 0 {
		t.Errorf("serve --read-only of a layer on a read-only filesystem: exit %d: %s", res.code, res.stderr)
	}
	if r := hib(t, dir, "resize", top, "2M"); r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("resize on a read-only filesystem: exit %d, stderr %q; want one error line", r.code, r.stderr)
	}
}

// TestChangedBaseCaught is finding 5: a base written after a child was
// made over it, by a writable server's client or by the sqlite3 shell, was
// silently mixed into the child's view and check said "No errors".
func TestChangedBaseCaught(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	testenv.RequireTools(t, "sqlite3", "sqlite3")
	for _, how := range []string{"served", "sqlite3"} {
		t.Run(how, func(t *testing.T) {
			dir := testDir(t)
			mustHib(t, dir, "create", "-s", "1M", "base.db")
			mustHib(t, dir, "create", "-b", "base.db", "job.db")
			switch how {
			case "served":
				sock := filepath.Join(dir, "b.sock")
				stop := startServer(t, dir, "--socket", sock, "base.db")
				qemuIO(t, "nbd+unix:///?socket="+sock, "write -P 7 64k 4k", "flush")
				stop()
			case "sqlite3":
				out, err := exec.Command("sqlite3", filepath.Join(dir, "base.db"),
					"INSERT INTO sectors (sector, data) VALUES (16, randomblob(4096))").CombinedOutput()
				if err != nil {
					t.Fatalf("sqlite3: %v: %s", err, out)
				}
			}
			for _, args := range [][]string{{"check", "job.db"}, {"info", "job.db"}, {"compare", "base.db", "job.db"}} {
				r := hib(t, dir, args...)
				if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "generation") {
					t.Errorf("hibdisk %s over a base written since: exit %d, %s%s; want a failure naming the generation",
						strings.Join(args, " "), r.code, r.stdout, r.stderr)
				}
			}
			// The user says the change is intended.
			mustHib(t, dir, "rebase", "-u", "-b", "base.db", "job.db")
			mustHib(t, dir, "check", "job.db")
		})
	}
}
