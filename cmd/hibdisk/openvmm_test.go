package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/checktest"
	ovt "github.com/hibdisk/hibdisk/internal/openvmmtest"
)

// openVMMFile makes f.db in dir with the sqlite3 shell and OpenVMM's DDL
// (1 MiB of ss-byte sectors: data in sectors 1, 3 and the last, a NULL
// row in 2, an all-zero data row in 4) and raw.img, its content as a raw
// image. It returns the content.
func openVMMFile(t *testing.T, dir string, ss int) []byte {
	t.Helper()
	count := (1 << 20) / ss
	ovt.Make(t, filepath.Join(dir, "f.db"), int64(count), ss, fmt.Sprintf("INSERT INTO sectors VALUES (1, %s), (2, NULL), (3, %s), (4, zeroblob(%d)), (%d, %s);",
		ovt.Fill(ss, 'A'), ovt.Fill(ss, 'B'), ss, count-1, ovt.Fill(ss, 'Z')))
	want := make([]byte, 1<<20)
	copy(want[ss:], ovt.Pattern(ss, 'A'))
	copy(want[3*ss:], ovt.Pattern(ss, 'B'))
	copy(want[(count-1)*ss:], ovt.Pattern(ss, 'Z'))
	if err := os.WriteFile(filepath.Join(dir, "raw.img"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	return want
}

// TestOpenVMMReadCommands: info, map and compare read an OpenVMM file
// through its rows, and leave it (and its directory) as they were.
func TestOpenVMMReadCommands(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			dir := testDir(t)
			openVMMFile(t, dir, ss)
			before := fileDigest(t, filepath.Join(dir, "f.db"), filepath.Join(dir, "f.db-wal"), filepath.Join(dir, "f.db-shm"))
			info := mustHib(t, dir, "info", "f.db")
			for _, want := range []string{"file format: openvmm", "virtual size: 1 MiB (1048576 bytes)", fmt.Sprintf("sector size: %d", ss)} {
				if !strings.Contains(info, want) {
					t.Errorf("info lacks %q:\n%s", want, info)
				}
			}
			if out := mustHib(t, dir, "compare", "f.db", "raw.img"); !strings.Contains(out, "identical") {
				t.Errorf("compare f.db raw.img: %s", out)
			}
			m := mustHib(t, dir, "map", "f.db")
			if !strings.Contains(m, fmt.Sprintf("%#-20x%#-20x%-7s0 f.db", 2*ss, ss, "zero")) {
				t.Errorf("map does not show sector 2's NULL row as zero:\n%s", m)
			}
			if fileDigest(t, filepath.Join(dir, "f.db"), filepath.Join(dir, "f.db-wal"), filepath.Join(dir, "f.db-shm")) != before {
				t.Error("reading f.db changed it or made a -wal or -shm beside it")
			}
		})
	}
}

// TestOpenVMMConvert: openvmm to raw is the raw image byte for byte;
// openvmm to hibdisk to openvmm gives a file that SQLite, queried as
// OpenVMM does, finds in OpenVMM's format with the same content.
func TestOpenVMMConvert(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			dir := testDir(t)
			want := openVMMFile(t, dir, ss)
			mustHib(t, dir, "convert", "-O", "raw", "f.db", "out.img")
			if got, err := os.ReadFile(filepath.Join(dir, "out.img")); err != nil || !bytes.Equal(got, want) {
				t.Errorf("convert -O raw: not the content byte for byte (%v)", err)
			}
			mustHib(t, dir, "convert", "f.db", "f.hib")
			mustHib(t, dir, "convert", "-O", "openvmm", "--sector-size", fmt.Sprint(ss), "f.hib", "back.db")
			mustHib(t, dir, "convert", "-O", "raw", "back.db", "back.img")
			if got, err := os.ReadFile(filepath.Join(dir, "back.img")); err != nil || !bytes.Equal(got, want) {
				t.Errorf("openvmm -> hibdisk -> openvmm -> raw: not the content byte for byte (%v)", err)
			}
			checkOpenVMMFile(t, dir, "back.db", int64((1<<20)/ss), ss, "1,3,"+fmt.Sprint((1<<20)/ss-1))
		})
	}
}

// checkOpenVMMFile queries the file with the sqlite3 shell the way
// OpenVMM reads it, against f.db, which the shell formatted with
// OpenVMM's own DDL.
func checkOpenVMMFile(t *testing.T, dir, name string, count int64, ss int, rows string) {
	t.Helper()
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path + "-wal"); !os.IsNotExist(err) {
		t.Errorf("%s has a -wal beside it: not complete in one file (%v)", name, err)
	}
	schema := "SELECT sql FROM sqlite_master ORDER BY rowid;"
	if got, want := ovt.Shell(t, path, schema), ovt.Shell(t, filepath.Join(dir, "f.db"), schema); got != want {
		t.Errorf("%s schema:\n%s\nwant OpenVMM's:\n%s", name, got, want)
	}
	for _, c := range []struct{ sql, want string }{
		{"SELECT metadata FROM meta;", ovt.MetaJSON(false, count, ss)},
		{"SELECT json_extract(metadata, '$') FROM meta;", ovt.MetaJSON(false, count, ss)},
		{"PRAGMA journal_mode;", "wal"},
		{"SELECT group_concat(sector) FROM sectors;", rows},
		{"SELECT count(*) FROM sectors WHERE data IS NULL;", "0"},
		{fmt.Sprintf("SELECT count(*) FROM sectors WHERE length(data) != %d;", ss), "0"},
		{"PRAGMA integrity_check;", "ok"},
	} {
		if got := ovt.Shell(t, path, c.sql); got != c.want {
			t.Errorf("%s: %s = %q, want %q", name, c.sql, got, c.want)
		}
	}
}

// TestOpenVMMBase: a hibdisk diff layer over an OpenVMM base (create -b
// -F openvmm), written and read back; a change to the base afterwards
// is refused by every command that opens the chain.
func TestOpenVMMBase(t *testing.T) {
	dir := testDir(t)
	want := openVMMFile(t, dir, 512)
	if r := hib(t, dir, "create", "-b", "f.db", "job.db"); r.code != 1 || !strings.Contains(r.stderr, "-F openvmm") {
		t.Errorf("create -b f.db without -F: exit %d, %q; want a refusal saying -F openvmm", r.code, r.stderr)
	}
	out := mustHib(t, dir, "create", "-s", "8M", "-b", "f.db", "-F", "openvmm", "job.db")
	if !strings.Contains(out, "backing_file=f.db backing_fmt=openvmm") {
		t.Errorf("create: %s", out)
	}
	writeChain(t, filepath.Join(dir, "job.db"))
	want = append(want, make([]byte, 7<<20)...)
	copy(want, bytes.Repeat([]byte{0x5a}, 64<<10))
	copy(want[1<<20+512:], bytes.Repeat([]byte{0xa5}, 1000))
	mustHib(t, dir, "convert", "-O", "raw", "job.db", "job.img")
	if got, err := os.ReadFile(filepath.Join(dir, "job.img")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the chain over f.db reads other content (%v)", err)
	}
	if info := mustHib(t, dir, "info", "job.db"); !strings.Contains(info, "backing file format: openvmm") || !strings.Contains(info, "file format: openvmm") {
		t.Errorf("info:\n%s", info)
	}
	mustHib(t, dir, "convert", "-O", "openvmm", "job.db", "flat.db")
	checkOpenVMMFile(t, dir, "flat.db", 2048, 4096, "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,255,256")

	ovt.Shell(t, filepath.Join(dir, "f.db"), "UPDATE sectors SET data = NULL WHERE sector = 3;")
	checktest.Damaged(t, filepath.Join(dir, "job.db"), "parent")
	r := hib(t, dir, "info", "job.db")
	if r.code != 1 || strings.Count(r.stderr, "sha256-sampled:") != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("info over a changed OpenVMM base: exit %d, stderr %q; want one line naming both digests", r.code, r.stderr)
	}
	if r := hib(t, dir, "check", "job.db"); r.code == 0 || !strings.Contains(r.stdout, "openvmm parent") {
		t.Errorf("check over a changed OpenVMM base: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestOpenVMMDamaged: a damaged OpenVMM file gives one line naming what
// is wrong, from every command that reads it.
func TestOpenVMMDamaged(t *testing.T) {
	dir := testDir(t)
	openVMMFile(t, dir, 512)
	ovt.Shell(t, filepath.Join(dir, "f.db"), `UPDATE meta SET metadata = json_set(metadata, '$.sector_size', 1000);`)
	for _, args := range [][]string{{"info", "f.db"}, {"compare", "f.db", "raw.img"}, {"convert", "f.db", "out.db"}, {"create", "-b", "f.db", "-F", "openvmm", "job.db"}} {
		r := hib(t, dir, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "sector_size 1000") || !strings.Contains(r.stderr, "corrupt") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("hibdisk %s: exit %d, stderr %q; want one line naming sector_size 1000", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	for _, left := range []string{"out.db", "job.db"} {
		if _, err := os.Stat(filepath.Join(dir, left)); !os.IsNotExist(err) {
			t.Errorf("a failed command left %s", left)
		}
	}
}
