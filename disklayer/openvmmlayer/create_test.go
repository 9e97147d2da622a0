package openvmmlayer_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/openvmmlayer"
	ovt "github.com/hibdisk/hibdisk/internal/openvmmtest"
)

// TestCreateWritesOpenVMMsFormat checks a file Create wrote with the
// sqlite3 shell and the queries OpenVMM runs: the schema text of a file
// formatted by OpenVMM's own DDL, the exact meta JSON, WAL mode, and one
// row per non-zero sector, none NULL.
func TestCreateWritesOpenVMMsFormat(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			dir := t.TempDir()
			theirs := filepath.Join(dir, "theirs.db")
			ovt.Make(t, theirs, 16, ss, "")
			ours := filepath.Join(dir, "ours.db")
			l, err := openvmmlayer.Create(ours, openvmmlayer.CreateOptions{Size: int64(16 * ss), SectorSize: ss})
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 16*ss)
			for i := range want[ss+100 : 4*ss] {
				want[ss+100+i] = byte(i%251 + 1)
			}
			mustWrite(t, l, want[ss:5*ss], int64(ss)) // sector 4 is zeros: no row
			mustWrite(t, l, want[:ss+1], 0)           // sector 0 all zero: no row
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(ours + "-wal"); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Close left a -wal: %v", err)
			}
			schema := "SELECT sql FROM sqlite_master ORDER BY rowid;"
			if got, want := ovt.Shell(t, ours, schema), ovt.Shell(t, theirs, schema); got != want {
				t.Errorf("schema:\n%s\nwant OpenVMM's:\n%s", got, want)
			}
			checks := []struct{ sql, want string }{
				{"SELECT metadata FROM meta;", ovt.MetaJSON(false, 16, ss)},
				{"SELECT json_extract(metadata, '$') FROM meta;", ovt.MetaJSON(false, 16, ss)}, // OpenVMM's read
				{"PRAGMA journal_mode;", "wal"},
				{"SELECT group_concat(sector) FROM sectors;", "1,2,3"},
				{fmt.Sprintf("SELECT count(*) FROM sectors WHERE data IS NULL OR length(data) != %d;", ss), "0"},
				{"PRAGMA application_id; PRAGMA user_version;", "0\n0"},
				{"PRAGMA integrity_check;", "ok"},
			}
			for _, c := range checks {
				if got := ovt.Shell(t, ours, c.sql); got != c.want {
					t.Errorf("%s = %q, want %q", c.sql, got, c.want)
				}
			}
			r, err := openvmmlayer.Open(ours)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got := make([]byte, len(want))
			if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
				t.Errorf("read back: %v, equal %v", err, bytes.Equal(got, want))
			}
		})
	}
}

func mustWrite(t *testing.T, d disklayer.Disk, p []byte, off int64) {
	t.Helper()
	if _, err := d.WriteAt(p, off); err != nil {
		t.Fatalf("WriteAt(%d bytes at %d): %v", len(p), off, err)
	}
}

func TestCreateOptions(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ro.db")
	l, err := openvmmlayer.Create(path, openvmmlayer.CreateOptions{Size: 1 << 20, LogicallyReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Info(); got != (openvmmlayer.Info{LogicallyReadOnly: true, SectorCount: 2048, SectorSize: 512}) {
		t.Errorf("Info = %+v, want 2048 sectors of 512 (the default), logically read-only", got)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := ovt.Shell(t, path, "SELECT metadata FROM meta;"), ovt.MetaJSON(true, 2048, 512); got != want {
		t.Errorf("meta = %s, want %s", got, want)
	}
	if _, err := openvmmlayer.Create(path, openvmmlayer.CreateOptions{Size: 1 << 20}); !errors.Is(err, os.ErrExist) {
		t.Errorf("Create over an existing file = %v, want ErrExist", err)
	}
	for _, opts := range []openvmmlayer.CreateOptions{{Size: 1000}, {Size: 4096, SectorSize: 1000}, {Size: -512}} {
		if _, err := openvmmlayer.Create(filepath.Join(dir, "bad.db"), opts); !errors.Is(err, disklayer.ErrInvalid) {
			t.Errorf("Create(%+v) = %v, want ErrInvalid", opts, err)
		}
	}
}
