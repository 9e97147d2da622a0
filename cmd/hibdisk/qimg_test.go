package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ncruces/go-sqlite3"
)

// sqlExec runs statements on a layer's database directly, the way a user
// with the sqlite3 shell could damage it.
func sqlExec(t *testing.T, path string, stmts ...string) {
	t.Helper()
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, s := range stmts {
		if err := conn.Exec(s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// wantExit runs a command that must end with code and returns its result.
func wantExit(t *testing.T, dir string, code int, args ...string) result {
	t.Helper()
	r := hib(t, dir, args...)
	if r.code != code {
		t.Fatalf("hibdisk %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, code, r.stdout, r.stderr)
	}
	return r
}

// TestCheckExitCodes: check exits as qemu-img check does: 0 clean, 3 for
// leaks only (all-zero data blobs: space, no data at risk), 2 for
// corruption, 63 for a format without checks; -r leaks and -r all repair,
// and --output=json reports the same.
func TestCheckExitCodes(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	mustHib(t, dir, "create", "-b", "base.db", "job.db")
	golden(t, "check-clean.json", mustHib(t, dir, "check", "--output=json", "job.db"))

	// A leak: an all-zero data blob, which a tombstone would say in no
	// space.
	sqlExec(t, filepath.Join(dir, "job.db"), "INSERT INTO sectors VALUES (3, zeroblob(4096))")
	golden(t, "check-leaks.txt", wantExit(t, dir, 3, "check", "job.db").stdout)
	r := wantExit(t, dir, 3, "check", "--json", "job.db")
	golden(t, "check-leaks.json", r.stdout)
	if r.stderr != "" {
		t.Errorf("check --json with leaks: stderr %q, want nothing", r.stderr)
	}
	if r := wantExit(t, dir, 3, "check", "-q", "job.db"); r.stdout != "" || r.stderr != "" {
		t.Errorf("check -q printed %q %q", r.stdout, r.stderr)
	}

	// Corruption besides: a row past the end. Leaks alone no longer
	// decide the status.
	sqlExec(t, filepath.Join(dir, "job.db"), "INSERT INTO sectors VALUES (999, randomblob(4096))")
	r = wantExit(t, dir, 2, "check", "job.db")
	golden(t, "check-corrupt.txt", r.stdout+r.stderr)
	golden(t, "check-corrupt.json", wantExit(t, dir, 2, "check", "--output=json", "job.db").stdout)

	// -r leaks fixes what loses nothing; the row past the end stays.
	r = wantExit(t, dir, 2, "check", "-r", "leaks", "job.db")
	if !strings.Contains(r.stdout, "Repaired: sectors: 1 turned all-zero data blobs into tombstones") || strings.Contains(r.stdout, "Leaked:") {
		t.Errorf("check -r leaks:\n%s", r.stdout)
	}
	// -r all also drops the row past the end (--repair --force).
	golden(t, "check-repair-all.json", mustHib(t, dir, "check", "-r", "all", "--output=json", "job.db"))
	mustHib(t, dir, "check", "job.db")

	// A raw image has no checks: 63, as qemu-img check of a raw file.
	runTool(t, "qemu-img", "create", "-q", "-f", "raw", filepath.Join(dir, "r.img"), "1M")
	r = wantExit(t, dir, 63, "check", "r.img")
	golden(t, "check-raw.txt", r.stderr)
	golden(t, "check-raw-error.json", wantExit(t, dir, 63, "check", "--output=json", "r.img").stderr)
	wantExit(t, dir, 2, "check", "-r", "some", "job.db")
}

// TestFormatFlag: -f and -F check the format and refuse a mismatch in one
// line; a matching -f changes nothing.
func TestFormatFlag(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "a.db")
	runTool(t, "qemu-img", "create", "-q", "-f", "raw", filepath.Join(dir, "r.img"), "1M")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "q.qcow2"), "1M")
	for _, args := range [][]string{
		{"info", "-f", "hibdisk", "a.db"}, {"info", "-f", "raw", "r.img"}, {"info", "-f", "qcow2", "q.qcow2"},
		{"map", "-f", "raw", "r.img"}, {"check", "-f", "hibdisk", "a.db"},
		{"compare", "-f", "hibdisk", "-F", "qcow2", "a.db", "q.qcow2"},
		{"convert", "-f", "qcow2", "q.qcow2", "out.db"},
	} {
		mustHib(t, dir, args...)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"info", "-f", "raw", "a.db"}, 1, `hibdisk info: "a.db" is a hibdisk image, not raw: say -f hibdisk (or leave -f out: formats are detected)`},
		{[]string{"map", "-f", "hibdisk", "q.qcow2"}, 1, `hibdisk map: "q.qcow2" is a qcow2 image, not hibdisk: say -f qcow2 (or leave -f out: formats are detected)`},
		{[]string{"compare", "-F", "raw", "a.db", "q.qcow2"}, 2, `hibdisk compare: "q.qcow2" is a qcow2 image, not raw: say -F qcow2 (or leave -F out: formats are detected)`},
		{[]string{"convert", "-f", "raw", "q.qcow2", "x.db"}, 1, `hibdisk convert: "q.qcow2" is a qcow2 image, not raw: say -f qcow2 (or leave -f out: formats are detected)`},
		{[]string{"commit", "-f", "qcow2", "a.db"}, 2, `hibdisk commit: -f qcow2: hibdisk commit changes hibdisk layers only (for a qcow2 image: qemu-img commit -f qcow2)`},
		{[]string{"resize", "-f", "hibdisk", "r.img", "+1M"}, 1, `hibdisk resize: "r.img" is a raw image, not hibdisk: say -f raw (or leave -f out: formats are detected)`},
		{[]string{"create", "-f", "qcow2", "n.qcow2", "1M"}, 2, `hibdisk create: -f qcow2: hibdisk create makes hibdisk layers only (for qcow2: qemu-img create -f qcow2, or hibdisk convert -O qcow2 from a layer)`},
		{[]string{"info", "-f", "ext4", "a.db"}, 2, `hibdisk info: -f ext4: want one of hibdisk, raw, nbd, openvmm, qcow2, qcow, qed, vmdk, vhdx, vpc, vdi, parallels`},
		{[]string{"info", "--output=xml", "a.db"}, 2, `hibdisk info: --output=xml: want human or json`},
	} {
		r := hib(t, dir, tc.args...)
		if r.code != tc.code || r.stderr != tc.want+"\n" {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want exit %d, %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x.db")); err == nil {
		t.Error("convert with a wrong -f created its output")
	}
}

// TestInfoBackingChain: plain info shows the top image only, as qemu-img
// info does; --backing-chain shows every layer (the golden transcript
// has both, info.txt and info-chain.txt).
func TestInfoBackingChain(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "1M", "base.db")
	mustHib(t, dir, "create", "-b", "base.db", "job.db")
	if out := mustHib(t, dir, "info", "-U", "job.db"); strings.Contains(out, "image: base.db") {
		t.Errorf("info without --backing-chain shows the base:\n%s", out)
	}
	var chain []layerJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "info", "--force-share", "--backing-chain", "--output=json", "job.db")), &chain); err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[1].Filename != "base.db" {
		t.Errorf("info --backing-chain --output=json: %+v", chain)
	}
	var top []layerJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "info", "--json", "job.db")), &top); err != nil {
		t.Fatal(err)
	}
	if len(top) != 1 || top[0].Filename != "job.db" {
		t.Errorf("info --json: %+v", top)
	}
}

// TestMapOffsetAndRange: map --start-offset/--max-length clip the map as
// qemu-img's do, and a raw file's runs are qemu-img's, offset field
// included (holes are present zeros), a layer's have no offset.
func TestMapOffsetAndRange(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "8M", "base.db")
	writeChain(t, filepath.Join(dir, "base.db"))
	golden(t, "map-range.json", mustHib(t, dir, "map", "--output=json", "--start-offset=32K", "--max-length", "1M", "base.db"))
	golden(t, "map-range.txt", mustHib(t, dir, "map", "--start-offset", "1M", "--max-length=4096", "base.db"))

	raw := filepath.Join(dir, "r.img")
	runTool(t, "qemu-img", "create", "-q", "-f", "raw", raw, "1M")
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 64k 64k", raw)
	var ours, theirs []mapJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "map", "--output=json", "r.img")), &ours); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(runTool(t, "qemu-img", "map", "-f", "raw", "--output=json", raw)), &theirs); err != nil {
		t.Fatal(err)
	}
	for _, m := range theirs {
		found := false
		for _, o := range ours {
			if o.Data == m.Data && o.Present == m.Present && o.Start == m.Start && o.Length == m.Length && o.Offset != nil && *o.Offset == *m.Offset {
				found = true
			}
		}
		if !found {
			t.Errorf("qemu-img map's run %+v (offset %d) is not in hibdisk's map %+v", m, *m.Offset, ours)
		}
	}
	if strings.Contains(mustHib(t, dir, "map", "--json", "base.db"), `"offset"`) {
		t.Error("map of a hibdisk layer has an offset field")
	}
	wantExit(t, dir, 2, "map", "--start-offset=x", "base.db")
}

// TestCompareStrict: compare -s matches qemu-img compare -s: a size
// mismatch or a range allocated in one image only is a difference
// (exit 1) with qemu-img's lines; the default mode ignores both.
func TestCompareStrict(t *testing.T) {
	dir := testDir(t)
	// q2 has a zeroed cluster where q1 has none: qemu-img compare -s
	// tells them apart, hibdisk cannot (it reads qcow2 through qemu-nbd,
	// whose block status has no "allocated" bit: README says so).
	q1, q2, q3 := filepath.Join(dir, "q1.qcow2"), filepath.Join(dir, "q2.qcow2"), filepath.Join(dir, "q3.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", q1, "1M")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", q2, "1M")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", q3, "2M")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -z 64k 64k", q2)
	mustHib(t, dir, "convert", "q2.qcow2", "z.db")
	mustHib(t, dir, "create", "-s", "1M", "e.db")
	mustHib(t, dir, "create", "-b", "e.db", "t.db")
	// A tombstone over nothing: reads as zeros, as e.db does, but is
	// allocated (qemu-img's "block status" differs).
	sqlExec(t, filepath.Join(dir, "t.db"), "INSERT INTO sectors VALUES (2, NULL)")

	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"compare", "q1.qcow2", "q2.qcow2"}, 0, "Images are identical.\n"},
		{[]string{"compare", "q1.qcow2", "q3.qcow2"}, 0, "Warning: Image size mismatch!\nImages are identical.\n"},
		{[]string{"compare", "-s", "q1.qcow2", "q3.qcow2"}, 1, "Strict mode: Image size mismatch!\n"},
		{[]string{"compare", "-s", "e.db", "t.db"}, 1, "Strict mode: Offset 8192 block status mismatch!\n"},
		{[]string{"compare", "e.db", "t.db"}, 0, "Images are identical.\n"},
		{[]string{"compare", "-q", "-s", "e.db", "t.db"}, 1, ""},
	} {
		r := hib(t, dir, tc.args...)
		if r.code != tc.code || r.stdout != tc.out {
			t.Errorf("hibdisk %s: exit %d, stdout %q; want %d, %q", strings.Join(tc.args, " "), r.code, r.stdout, tc.code, tc.out)
		}
	}
	// qemu-img says the same of the same qcow2 files.
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"compare", "-s", q1, q3}, "Strict mode: Image size mismatch!\n"},
	} {
		if out, _ := execOutput("qemu-img", tc.args...); out != tc.out {
			t.Errorf("qemu-img %s: %q, want %q (test's premise)", strings.Join(tc.args, " "), out, tc.out)
		}
	}
	r := wantExit(t, dir, 1, "compare", "-s", "--output=json", "e.db", "t.db")
	golden(t, "compare-strict.json", r.stdout)
	if r.stderr != "" {
		t.Errorf("compare --output=json of different images: stderr %q, want nothing (a verdict, not an error)", r.stderr)
	}
	golden(t, "compare-identical.json", mustHib(t, dir, "compare", "--json", "e.db", "t.db"))
	golden(t, "compare-size.json", wantExit(t, dir, 1, "compare", "-s", "--json", "q1.qcow2", "q3.qcow2").stdout)
	golden(t, "compare-error.json", wantExit(t, dir, 2, "compare", "--json", "e.db", "nothere.db").stderr)
}

// TestResultJSON: create, commit and convert print one JSON object
// describing what they did; -q silences their text.
func TestResultJSON(t *testing.T) {
	dir := testDir(t)
	golden(t, "create.json", mustHib(t, dir, "create", "--output=json", "--label", "golden", "base.db", "8M"))
	golden(t, "create-diff.json", mustHib(t, dir, "create", "--json", "-b", "base.db", "job.db"))
	writeChain(t, filepath.Join(dir, "job.db"))
	golden(t, "convert.json", mustHib(t, dir, "convert", "--output=json", "-O", "raw", "job.db", "view.raw"))
	golden(t, "commit.json", mustHib(t, dir, "commit", "--json", "job.db"))
	for _, args := range [][]string{
		{"create", "-q", "-s", "1M", "b2.db"}, {"create", "-q", "-b", "b2.db", "j2.db"}, {"commit", "-q", "j2.db"}, {"resize", "-q", "j2.db", "+1M"},
		{"convert", "-q", "j2.db", "j2copy.db"}, {"rebase", "-q", "-b", "", "j2.db"},
	} {
		if out := mustHib(t, dir, args...); out != "" {
			t.Errorf("hibdisk %s printed %q", strings.Join(args, " "), out)
		}
	}
	golden(t, "create-error.json", wantExit(t, dir, 1, "create", "--json", "-s", "1M", "base.db").stderr)
}

// TestConvertExisting: convert -n writes into an existing layer or raw
// image (zeros included, so what was there does not show through) and
// refuses one that is smaller, of a format hibdisk does not write, or
// missing.
func TestConvertExisting(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "8M", "src.db")
	writeChain(t, filepath.Join(dir, "src.db"))
	mustHib(t, dir, "convert", "-O", "raw", "src.db", "want.raw")

	raw := filepath.Join(dir, "t.img")
	runTool(t, "qemu-img", "create", "-q", "-f", "raw", raw, "8M")
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 8M", raw)
	golden(t, "convert-n.json", mustHib(t, dir, "convert", "-n", "--output=json", "src.db", "t.img"))
	if out := runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", raw, filepath.Join(dir, "want.raw")); out != "Images are identical.\n" {
		t.Errorf("qemu-img compare after convert -n into a raw image: %s", out)
	}

	mustHib(t, dir, "create", "-s", "8M", "t.db")
	sqlExec(t, filepath.Join(dir, "t.db"), "INSERT INTO sectors VALUES (1000, randomblob(4096)), (0, randomblob(4096))")
	mustHib(t, dir, "convert", "-n", "src.db", "t.db")
	if out := mustHib(t, dir, "compare", "t.db", "want.raw"); out != "Images are identical.\n" {
		t.Errorf("compare after convert -n into a layer: %s", out)
	}

	runTool(t, "qemu-img", "create", "-q", "-f", "raw", filepath.Join(dir, "small.img"), "4M")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "t.qcow2"), "8M")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"convert", "-n", "src.db", "small.img"}, `hibdisk convert: convert into "small.img": it is 4194304 bytes, smaller than the source's 8388608: grow it first (hibdisk resize small.img 8388608): out of range`},
		{[]string{"convert", "-n", "src.db", "t.qcow2"}, `hibdisk convert: convert into "t.qcow2": it is a qcow2 image: hibdisk writes into hibdisk layers and raw images only (for qcow2: qemu-img convert -n): invalid argument`},
		{[]string{"convert", "-n", "src.db", "none.db"}, `hibdisk convert: none.db does not exist: -n writes into an existing image; leave out -n to create it`},
		{[]string{"convert", "-n", "-O", "raw", "src.db", "t.img"}, `hibdisk convert: -n writes into DST as it is: leave out -O, -o, -c and --sector-size`},
	} {
		r := hib(t, dir, tc.args...)
		if r.code == 0 || r.stderr != tc.want+"\n" {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
}

// TestResizeNegative: resize FILE -64M needs no --, as in qemu-img.
func TestResizeNegative(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "8M", "a.db")
	mustHib(t, dir, "resize", "a.db", "--shrink", "-4M")
	mustHib(t, dir, "resize", "--shrink", "a.db", "--", "-1M")
	if out := mustHib(t, dir, "info", "a.db"); !strings.Contains(out, "(3145728 bytes)") {
		t.Errorf("after resize -4M and -1M:\n%s", out)
	}
	wantExit(t, dir, 1, "resize", "a.db", "-1M") // shrinking needs --shrink
	wantExit(t, dir, 2, "resize", "a.db", "-1M", "-2M")
	// A size that is not a whole number of sectors is refused with the
	// size that would do, as create does (see TestErrorsSayWhatToDo).
	r := wantExit(t, dir, 1, "resize", "a.db", "+100")
	if !strings.Contains(r.stderr, "round it up: 3149824") {
		t.Errorf("resize to 100 bytes: %s", r.stderr)
	}
}

// TestProgress: -p on commit, rebase and compare draws qemu-img's bar on
// a terminal up to 100%, and prints nothing when stderr is piped.
func TestProgress(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "8M", "base.db")
	mustHib(t, dir, "create", "-b", "base.db", "job.db")
	writeChain(t, filepath.Join(dir, "job.db"))
	for _, args := range [][]string{
		{"compare", "-p", "base.db", "base.db"},
		{"rebase", "-p", "-b", "", "job.db"},
		{"rebase", "-u", "-b", "base.db", "job.db"},
		{"commit", "-p", "-d", "job.db"},
	} {
		if r := hib(t, dir, args...); r.code != 0 || r.stderr != "" {
			t.Errorf("hibdisk %s piped: exit %d, stderr %q, want nothing", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	for _, args := range [][]string{
		{"compare", "-p", "base.db", "job.db"},
		{"rebase", "-p", "-b", "", "job.db"},
		{"rebase", "-u", "-b", "base.db", "job.db"},
		{"commit", "-p", "job.db"},
	} {
		r := hibTerm(t, dir, args...)
		if args[1] == "-u" {
			continue
		}
		if r.code != 0 || !strings.HasPrefix(r.stderr, "\r    (") || !strings.HasSuffix(r.stderr, "\r    (100.00/100%)\n") {
			t.Errorf("hibdisk %s on a terminal: exit %d, stderr %q; want a bar up to 100%%", strings.Join(args, " "), r.code, r.stderr)
		}
	}
}

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	return string(out), err
}
