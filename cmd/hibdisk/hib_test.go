package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"
)

// hibChain imports testdata/hib-before.json into base.db and
// hib-after.json into job.db over it.
func hibChain(t *testing.T) string {
	t.Helper()
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	golden(t, "hib-import.txt", mustHib(t, dir, "hib", "import", filepath.Join(testdata, "hib-before.json"), "base.db"))
	mustHib(t, dir, "create", "-b", "base.db", "job.db")
	mustHib(t, dir, "hib", "import", filepath.Join(testdata, "hib-after.json"), "job.db")
	return dir
}

// hibDiffers runs hib diff ARGS, which must find a difference: exit 1,
// as diff(1), and nothing on stderr.
func hibDiffers(t *testing.T, dir string, args ...string) string {
	t.Helper()
	r := hib(t, dir, append([]string{"hib", "diff"}, args...)...)
	if r.code != 1 || r.stderr != "" {
		t.Fatalf("hibdisk hib diff %s: exit %d, stderr %q; want exit 1 (they differ) and no error", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

func TestHibTranscript(t *testing.T) {
	dir := hibChain(t)
	golden(t, "hib-ps.txt", mustHib(t, dir, "hib", "ps", "base.db"))
	golden(t, "hib-ps.json", mustHib(t, dir, "hib", "ps", "--json", "base.db"))
	golden(t, "hib-maps.txt", mustHib(t, dir, "hib", "maps", "base.db", "101"))
	golden(t, "hib-maps.json", mustHib(t, dir, "hib", "maps", "--json", "base.db", "101"))
	golden(t, "hib-files.txt", mustHib(t, dir, "hib", "files", "base.db", "101"))
	golden(t, "hib-signals.txt", mustHib(t, dir, "hib", "signals", "base.db", "101"))
	golden(t, "hib-show.txt", mustHib(t, dir, "hib", "show", "job.db"))
	golden(t, "hib-show.json", mustHib(t, dir, "hib", "show", "--json", "job.db"))
	golden(t, "hib-diff.txt", hibDiffers(t, dir, "base.db", "job.db"))
	golden(t, "hib-diff.json", hibDiffers(t, dir, "--json", "base.db", "job.db"))
	golden(t, "hib-check.txt", mustHib(t, dir, "hib", "check", "job.db"))

	// Export is canonical: importing it elsewhere exports the same bytes.
	exported := mustHib(t, dir, "hib", "export", "base.db")
	golden(t, "hib-export.json", exported)
	if err := os.WriteFile(filepath.Join(dir, "exported.json"), []byte(exported), 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "create", "-s", "1M", "copy.db")
	mustHib(t, dir, "hib", "import", "exported.json", "copy.db")
	if again := mustHib(t, dir, "hib", "export", "copy.db"); again != exported {
		t.Errorf("export of the re-imported snapshot differs from the original export")
	}
	if got := mustHib(t, dir, "hib", "diff", "base.db", "copy.db"); !strings.HasPrefix(got, "processes: +0 -0 ~0; mappings: +0 -0 ~0; pages changed: 0") {
		t.Errorf("hib diff of a snapshot and its copy:\n%s", got)
	}
}

func TestHibReadOnlyCommandsLeaveFilesIdentical(t *testing.T) {
	dir := hibChain(t)
	before := fileDigest(t, filepath.Join(dir, "base.db"), filepath.Join(dir, "job.db"))
	for _, args := range [][]string{
		{"hib", "ps", "job.db"}, {"hib", "maps", "job.db", "101"}, {"hib", "files", "job.db", "101"},
		{"hib", "signals", "job.db", "101"}, {"hib", "show", "job.db"}, {"hib", "export", "job.db"},
		{"hib", "diff", "base.db", "job.db"}, {"hib", "check", "job.db"}, {"check", "job.db"},
	} {
		if r := hib(t, dir, args...); r.code != 0 && (args[1] != "diff" || r.code != 1) {
			t.Fatalf("hibdisk %s: exit %d, stderr: %s", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	if after := fileDigest(t, filepath.Join(dir, "base.db"), filepath.Join(dir, "job.db")); after != before {
		t.Error("a read-only hib command changed the files")
	}
}

func TestHibBadInput(t *testing.T) {
	dir := hibChain(t)
	mustHib(t, dir, "create", "-s", "1M", "empty.db")
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"hib"}, 2, "missing subcommand"},
		{[]string{"hib", "nope"}, 2, "unknown subcommand"},
		{[]string{"hib", "ps", "empty.db"}, 1, "no hibernate snapshot"},
		{[]string{"hib", "maps", "base.db", "999"}, 1, "no such process"},
		{[]string{"hib", "maps", "base.db", "x"}, 2, "not a number"},
		{[]string{"hib", "import", filepath.Join(testdata, "hib-before.json"), "base.db"}, 1, "already holds a hibernate snapshot"},
		{[]string{"hib", "capture", "base.db"}, 2, "--pid is required"},
		{[]string{"hib", "ps", "missing.db"}, 1, "no such file"},
	} {
		r := hib(t, dir, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.msg) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want exit %d and one line with %q", strings.Join(tt.args, " "), r.code, r.stderr, tt.code, tt.msg)
		}
	}
}

// TestCheckIncludesHibernateMetadata: hibdisk check reports broken
// hibernate metadata, and check --repair fixes what follows from the rest.
func TestCheckIncludesHibernateMetadata(t *testing.T) {
	dir := hibChain(t)
	conn, err := sqlite3.Open(filepath.Join(dir, "job.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		"PRAGMA foreign_keys = OFF",
		"UPDATE hibernate_snapshot SET total_processes = 9",
		"INSERT INTO hibernate_files (snapshot_id, pid, fd, path) VALUES (1, 4242, 0, '/orphan')",
	} {
		if err := conn.Exec(sql); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	r := hib(t, dir, "check", "job.db")
	if r.code != 2 {
		t.Fatalf("hibdisk check of broken metadata: exit %d, want 2 (corruption)\n%s", r.code, r.stdout)
	}
	golden(t, "hib-check-broken.txt", r.stdout)
	if r := hib(t, dir, "hib", "check", "job.db"); r.code != 2 {
		t.Errorf("hibdisk hib check of broken metadata: exit %d, want 2 as check's (corruption)", r.code)
	}
	golden(t, "hib-check-repair.txt", mustHib(t, dir, "check", "--repair", "job.db"))
	mustHib(t, dir, "hib", "check", "job.db")
}

// TestHibCapture captures an idle process through the CLI, twice, the
// second time into a diff layer. The process is cat blocked reading an
// empty pipe: an interrupted read writes no memory when it restarts (an
// interrupted nanosleep would: the kernel stores the remaining time in the
// caller's buffer, so `sleep` changes a page when frozen). glibc's rseq
// registration is turned off: the kernel rewrites the rseq area's cpu id
// whenever the thread resumes on another CPU, which changes a page too.
func TestHibCapture(t *testing.T) {
	dir := testDir(t)
	cat := exec.Command("cat")
	cat.Env = append(os.Environ(), "GLIBC_TUNABLES=glibc.pthread.rseq=0")
	stdin, err := cat.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cat.Process.Kill(); cat.Wait() })
	pid := strconv.Itoa(cat.Process.Pid)
	// Capture only once cat has exec'd and blocks: before that it is
	// still loading and its memory changes between the captures.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		stat, _ := os.ReadFile("/proc/" + pid + "/stat")
		wchan, _ := os.ReadFile("/proc/" + pid + "/wchan")
		if strings.Contains(string(stat), "(cat) S") && strings.Contains(string(wchan), "pipe_read") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cat did not block reading: %q %q", stat, wchan)
		}
	}
	mustHib(t, dir, "create", "-s", "1M", "a.db")
	out := mustHib(t, dir, "hib", "capture", "--pid", pid, "a.db")
	if !strings.HasPrefix(out, "captured 1 processes into a.db") {
		t.Errorf("capture said:\n%s", out)
	}
	mustHib(t, dir, "create", "-b", "a.db", "b.db")
	out = mustHib(t, dir, "hib", "capture", "--no-freeze", "--pid", pid, "b.db")
	if !strings.Contains(out, "stored 0 changed blocks") {
		t.Errorf("re-capture of an idle process stored blocks:\n%s%s", out, hib(t, dir, "hib", "diff", "a.db", "b.db").stdout)
	}
	if ps := mustHib(t, dir, "hib", "ps", "b.db"); !strings.Contains(ps, pid) || !strings.Contains(ps, "cat") {
		t.Errorf("hib ps after capture:\n%s", ps)
	}
	// Without registers (--no-freeze), the diff reports exactly that.
	golden(t, "hib-capture-diff.txt", strings.ReplaceAll(hibDiffers(t, dir, "a.db", "b.db"), pid, "PID"))
}

// TestHibImportCreatesLayer: hib import into a layer that does not exist
// creates it (a base layer of -s SIZE, 1 MiB by default); a failed import
// leaves nothing behind.
func TestHibImportCreatesLayer(t *testing.T) {
	dir := hibChain(t)
	out := mustHib(t, dir, "hib", "import", filepath.Join(testdata, "hib-before.json"), "new.db")
	if !strings.HasPrefix(out, "created new.db (a 1 MiB base layer)\nimported snapshot 1 into new.db: ") {
		t.Errorf("hib import into a new layer said:\n%s", out)
	}
	if got, want := mustHib(t, dir, "hib", "export", "new.db"), mustHib(t, dir, "hib", "export", "base.db"); got != want {
		t.Error("the snapshot imported into a new layer exports differently from the same import into an existing one")
	}
	if r := hib(t, dir, "hib", "diff", "base.db", "new.db"); r.code != 0 || r.stderr != "" {
		t.Errorf("hib diff of two imports of one snapshot: exit %d, stderr %q; want 0", r.code, r.stderr)
	}
	mustHib(t, dir, "hib", "import", "-s", "64M", filepath.Join(testdata, "hib-after.json"), "big.db")
	if info := mustHib(t, dir, "info", "--json", "big.db"); !strings.Contains(info, `"virtual-size": 67108864`) {
		t.Errorf("hib import -s 64M made:\n%s", info)
	}

	if err := os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"format": "nope"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := hib(t, dir, "hib", "import", "bad.json", "bad.db")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("hib import of bad JSON: exit %d, stderr %q; want exit 1 and one line", r.code, r.stderr)
	}
	for _, p := range []string{"bad.db", "bad.db-wal", "bad.db-shm"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
			t.Errorf("a failed hib import left %s (stat: %v)", p, err)
		}
	}
}

// TestHibDiffExitStatus: hib diff exits as diff(1): 0 same, 1 different,
// 2 trouble (with one line on stderr).
func TestHibDiffExitStatus(t *testing.T) {
	dir := hibChain(t)
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"base.db", "base.db"}, 0, ""},
		{[]string{"--json", "job.db", "job.db"}, 0, ""},
		{[]string{"base.db", "job.db"}, 1, ""},
		{[]string{"--json", "base.db", "job.db"}, 1, ""},
		{[]string{"base.db", "missing.db"}, 2, "missing.db"},
	} {
		r := hib(t, dir, append([]string{"hib", "diff"}, tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) || strings.Count(r.stderr, "\n") > 1 || (tc.stderr == "") != (r.stderr == "") {
			t.Errorf("hibdisk hib diff %s: exit %d, stderr %q; want exit %d, stderr with %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.code, tc.stderr)
		}
	}
}
