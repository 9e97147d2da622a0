package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// qemuImg runs qemu-img (images for tests are made by the real tool).
func qemuImg(t *testing.T, dir string, args ...string) {
	t.Helper()
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	cmd := exec.Command("qemu-img", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// wantError runs a command that must fail with exactly the one line want
// on stderr and exit status code.
func wantError(t *testing.T, dir string, code int, want string, args ...string) result {
	t.Helper()
	r := hib(t, dir, args...)
	if r.code != code || r.stderr != want+"\n" {
		t.Errorf("hibdisk %s: exit %d, stderr %q;\nwant exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr, code, want+"\n")
	}
	return r
}

// TestErrorsSayWhatToDo: the errors a user makes most often are one line
// that names the fix in the command's own flags.
func TestErrorsSayWhatToDo(t *testing.T) {
	dir := testDir(t)
	qemuImg(t, dir, "create", "-q", "-f", "raw", "base.img", "8M")
	qemuImg(t, dir, "create", "-q", "-f", "qcow2", "base.qcow2", "8M")

	// -F forgotten on a base that is not a hibdisk layer.
	wantError(t, dir, 1, `hibdisk create: base "base.img" is not a hibdisk layer; if it is a raw image, add -F raw`,
		"create", "-b", "base.img", "top.db")
	wantError(t, dir, 1, `hibdisk create: base "base.qcow2" looks like a qcow2 image; add -F qcow2 (a backing file's format is never guessed)`,
		"create", "-b", "base.qcow2", "top.db")
	mustHib(t, dir, "create", "-b", "base.img", "-F", "raw", "top.db")

	// A size that is not a whole number of sectors.
	wantError(t, dir, 1, "hibdisk create: size 100 is not a multiple of the 4096-byte sector size; round it up: -s 4096, or --sector-size 512 -s 512",
		"create", "-s", "100", "x.db")
	wantError(t, dir, 1, "hibdisk create: size 6144 is not a multiple of the 4096-byte sector size; add --sector-size 2048, or round it up: -s 8192",
		"create", "x.db", "6144")
	mustHib(t, dir, "create", "--sector-size", "2048", "x.db", "6144")
	wantError(t, dir, 1, "hibdisk resize: size 7000 is not a multiple of the 2048-byte sector size of the layer; round it up: 8192",
		"resize", "x.db", "7000")
	if _, err := os.Stat(filepath.Join(dir, "x.db")); err != nil {
		t.Fatal(err)
	}

	// A resume names the missing snapshot, not the existing new top.
	mustHib(t, dir, "create", "-s", "1M", "b1.db")
	wantError(t, dir, 1, `hibdisk vm: resume: snapshot layer "nothere.db": no such file or directory`,
		"vm", "resume", "--top", "b1.db", "nothere.db")

	// ds: the flag is --overwrite.
	mustHib(t, dir, "ds", "publish", "b1.db", "string", "k", "v")
	wantError(t, dir, 1, `hibdisk ds: publish string "k": entry exists (add --overwrite)`,
		"ds", "publish", "b1.db", "string", "k", "w")
	mustHib(t, dir, "ds", "subscribe", "--owner", "w", "--once", "b1.db", "k.*")
	wantError(t, dir, 1, `hibdisk ds: subscribe "w": already subscribed to "k.*": entry exists (add --overwrite)`,
		"ds", "subscribe", "--owner", "w", "--once", "b1.db", "x.*")
}

// TestInfoOfMovedParent: info of a layer whose parent moved prints the
// layer's own information, then one line saying how to point it at the
// parent's new place; doing that makes the chain whole again.
func TestInfoOfMovedParent(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "--label", "golden", "p.db")
	mustHib(t, dir, "create", "-b", "p.db", "--label", "job", "c.db")
	qemuImg(t, dir, "create", "-q", "-f", "raw", "r.img", "1M")
	mustHib(t, dir, "create", "-b", "r.img", "-F", "raw", "rc.db")
	if err := os.Mkdir(filepath.Join(dir, "moved"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"p.db", "r.img"} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(dir, "moved", f)); err != nil {
			t.Fatal(err)
		}
	}

	r := wantError(t, dir, 1, `hibdisk info: parent "p.db" of "c.db" is missing (no file "p.db"); if it moved, record where it is now: hibdisk rebase -u -b NEWPATH c.db`,
		"info", "c.db")
	for _, want := range []string{"image: c.db\n", "label: job\n", "backing file: p.db (actual path: p.db)\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("info of a layer whose parent moved: stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	// Asked for JSON, the error is one JSON object on stderr too.
	r = wantError(t, dir, 1, `{"command":"info","error":"parent \"p.db\" of \"c.db\" is missing (no file \"p.db\"); if it moved, record where it is now: hibdisk rebase -u -b NEWPATH c.db","exit":1}`,
		"info", "--json", "c.db")
	if !strings.Contains(r.stdout, `"filename": "c.db"`) {
		t.Errorf("info --json of a layer whose parent moved:\n%s", r.stdout)
	}
	// Commands that exit 2 on trouble explain it the same way.
	wantError(t, dir, 2, `hibdisk compare: parent "p.db" of "c.db" is missing (no file "p.db"); if it moved, record where it is now: hibdisk rebase -u -b NEWPATH c.db`,
		"compare", "c.db", "rc.db")
	wantError(t, dir, 1, `hibdisk info: parent "r.img" of "rc.db" is missing (no file "r.img"); if it moved, record where it is now: hibdisk rebase -u -b NEWPATH -F raw rc.db`,
		"info", "rc.db")

	// The advice works.
	mustHib(t, dir, "rebase", "-u", "-b", "moved/p.db", "c.db")
	mustHib(t, dir, "rebase", "-u", "-b", "moved/r.img", "-F", "raw", "rc.db")
	if out := mustHib(t, dir, "info", "--backing-chain", "c.db"); !strings.Contains(out, "image: moved/p.db") {
		t.Errorf("info after the rebase the error suggested:\n%s", out)
	}
	mustHib(t, dir, "info", "rc.db")
}

// TestFailureTranscript runs every command on the inputs users get
// wrong (a damaged layer, a file that is not a layer, a layer in use, a
// changed base, an existing target, a directory) and keeps what each
// says in testdata/failures.golden: one line, naming the file at fault
// and what to do, never the chain of operations it came through.
func TestFailureTranscript(t *testing.T) {
	testenv.RequireTools(t, "sqlite3", "sqlite3")
	dir := t.TempDir() // not testDir: the damaged layers are the point
	mustHib(t, dir, "create", "-s", "8M", "base.db")
	mustHib(t, dir, "create", "-b", "base.db", "top.db")
	mustHib(t, dir, "create", "-s", "8M", "held.db")
	mustHib(t, dir, "create", "-s", "8M", "moved.db")
	mustHib(t, dir, "create", "-b", "moved.db", "over-moved.db")
	mustHib(t, dir, "resize", "moved.db", "16M") // the base changes under its child
	qemuImg(t, dir, "create", "-q", "-f", "raw", "disk.raw", "8M")
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not a disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A SQLite database that is not a layer, and a layer whose layer
	// row's page is overwritten (dd, as a bad disk would).
	if out, err := exec.Command("sqlite3", filepath.Join(dir, "other.db"), "CREATE TABLE t(x)").CombinedOutput(); err != nil {
		t.Fatalf("sqlite3: %v: %s", err, out)
	}
	mustHib(t, dir, "create", "-s", "8M", "damaged.db")
	if out, err := exec.Command("dd", "if=/dev/urandom", "of="+filepath.Join(dir, "damaged.db"), "bs=4096", "seek=1", "count=2", "conv=notrunc").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	holdLayer(t, dir, "-k", filepath.Join(dir, "held.sock"), "held.db")

	lines := [][]string{
		{"create", "base.db", "1M"},
		{"create", "-b", "damaged.db", "x.db"},
		{"create", "-b", "held.db", "x.db"},
		{"convert", "base.db", "top.db"},
		{"info", "damaged.db"},
		{"info", "adir"},
		{"info", "over-moved.db", "--backing-chain"},
		{"map", "damaged.db"},
		{"map", "over-moved.db"},
		{"commit", "notes.txt"},
		{"commit", "other.db"},
		{"commit", "held.db"},
		{"commit", "over-moved.db"},
		{"compact", "notes.txt"},
		{"compact", "held.db"},
		{"resize", "held.db", "16M"},
		{"rebase", "-u", "-b", "base.db", "held.db"},
		{"serve", "--nbd", "-k", "x.sock", "held.db"},
		{"serve", "--nbd", "-k", "x.sock", "over-moved.db"},
		{"compare", "damaged.db", "base.db"},
		{"diff", "base.db", "damaged.db"},
		{"ls", "damaged.db", "/"},
		{"hib", "ps", "notes.txt"},
		{"hib", "import", "notes.txt", "new.db"},
		{"ds", "list", "other.db"},
		{"report", "base.db", "damaged.db"},
		{"check", "-r", "all", "held.db"},
	}
	var transcript strings.Builder
	pid := regexp.MustCompile(`pid \d+ \([^)]*\)`)
	for _, args := range lines {
		r := hib(t, dir, args...)
		if r.code == 0 {
			t.Errorf("hibdisk %s succeeded; it must fail", strings.Join(args, " "))
		}
		if strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "hibdisk ") {
			t.Errorf("hibdisk %s: stderr is not one line: %q", strings.Join(args, " "), r.stderr)
		}
		fmt.Fprintf(&transcript, "$ hibdisk %s\n%s[exit %d]\n", strings.Join(args, " "), pid.ReplaceAllString(r.stderr, "pid PID (COMMAND)"), r.code)
	}
	golden(t, "failures.golden", transcript.String())
	if _, err := os.Stat(filepath.Join(dir, "new.db")); err == nil {
		t.Error("a failed hib import left new.db behind")
	}
}
