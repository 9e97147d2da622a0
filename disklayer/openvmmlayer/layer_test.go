package openvmmlayer_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/openvmmlayer"
	ovt "github.com/hibdisk/hibdisk/internal/openvmmtest"
)

// sample is a 16-sector layer with every kind of row: sector 1 data, 2
// NULL, 3..5 data (5 an all-zero blob, which is still data), 7..8 NULL,
// 15 (the last) data; no row elsewhere.
func sample(t *testing.T, ss int) (path string, want []byte) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "openvmm.db")
	ovt.Make(t, path, 16, ss, fmt.Sprintf(`INSERT INTO sectors VALUES
 (1, %s), (2, NULL), (3, %s), (4, %s), (5, zeroblob(%d)), (7, NULL), (8, NULL), (15, %s);`,
		ovt.Fill(ss, 'A'), ovt.Fill(ss, 'B'), ovt.Fill(ss, 'C'), ss, ovt.Fill(ss, 'D')))
	want = make([]byte, 16*ss)
	for sector, c := range map[int]byte{1: 'A', 3: 'B', 4: 'C', 15: 'D'} {
		copy(want[sector*ss:], ovt.Pattern(ss, c))
	}
	return path, want
}

func sampleExtents(ss int64) []disklayer.Extent {
	var list []disklayer.Extent
	for _, e := range []struct {
		first, n int64
		kind     disklayer.ExtentKind
	}{{0, 1, disklayer.Absent}, {1, 1, disklayer.Data}, {2, 1, disklayer.Zero}, {3, 3, disklayer.Data}, {6, 1, disklayer.Absent},
		{7, 2, disklayer.Zero}, {9, 6, disklayer.Absent}, {15, 1, disklayer.Data}} {
		list = append(list, disklayer.Extent{Off: e.first * ss, Len: e.n * ss, Kind: e.kind})
	}
	return list
}

func extents(t *testing.T, l disklayer.Layer, off, length int64) []disklayer.Extent {
	t.Helper()
	var list []disklayer.Extent
	for e, err := range l.Extents(off, length) {
		if err != nil {
			t.Fatalf("Extents(%d, %d): %v", off, length, err)
		}
		list = append(list, e)
	}
	return list
}

// files lists the names in dir with their content digest.
func files(t *testing.T, dir string) map[string][32]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][32]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = sha256.Sum256(b)
	}
	return m
}

func TestOpenReadsWhatTheShellWrote(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(fmt.Sprint(ss), func(t *testing.T) {
			path, want := sample(t, ss)
			before := files(t, filepath.Dir(path))
			l, err := openvmmlayer.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := l.Info(); got != (openvmmlayer.Info{SectorCount: 16, SectorSize: ss}) || l.Size() != int64(16*ss) || l.SectorSize() != ss {
				t.Errorf("Info = %+v, Size %d, SectorSize %d", got, l.Size(), l.SectorSize())
			}
			checkReads(t, l, want)
			if got, wantList := extents(t, l, 0, l.Size()), sampleExtents(int64(ss)); !slices.Equal(got, wantList) {
				t.Errorf("Extents = %v\nwant %v", got, wantList)
			}
			// Clipped at both ends, inside sectors.
			got := extents(t, l, int64(ss)+7, int64(3*ss))
			wantList := []disklayer.Extent{{Off: int64(ss) + 7, Len: int64(ss) - 7, Kind: disklayer.Data}, {Off: int64(2 * ss), Len: int64(ss), Kind: disklayer.Zero}, {Off: int64(3 * ss), Len: int64(ss) + 7, Kind: disklayer.Data}}
			if !slices.Equal(got, wantList) {
				t.Errorf("Extents(ss+7, 3ss) = %v, want %v", got, wantList)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if after := files(t, filepath.Dir(path)); !maps(before, after) {
				t.Errorf("the directory changed: %v, then %v", keys(before), keys(after))
			}
		})
	}
}

func checkReads(t *testing.T, l disklayer.Layer, want []byte) {
	t.Helper()
	size := int64(len(want))
	for _, r := range [][2]int64{{0, size}, {1, 1000}, {size - 3, 3}, {size, 0}, {700, size - 700}} {
		p := make([]byte, r[1])
		if n, err := l.ReadAt(p, r[0]); err != nil || n != len(p) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", r[0], r[1], n, err)
		}
		if !bytes.Equal(p, want[r[0]:r[0]+r[1]]) {
			t.Errorf("ReadAt(%d, %d) differs from what the shell wrote", r[0], r[1])
		}
	}
	if _, err := l.ReadAt(make([]byte, 2), size-1); !errors.Is(err, disklayer.ErrOutOfRange) {
		t.Errorf("ReadAt past the end = %v, want ErrOutOfRange", err)
	}
}

func maps(a, b map[string][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func keys(m map[string][32]byte) []string {
	var list []string
	for k := range m {
		list = append(list, k)
	}
	slices.Sort(list)
	return list
}

// TestOpenUnfoldedWAL: a writer that stopped without checkpointing (the
// shell with no_ckpt_on_close, as a killed OpenVMM leaves it) has commits
// only in the -wal. Open reads them, leaves the files as they were, and
// the shell can write the file afterwards.
func TestOpenUnfoldedWAL(t *testing.T) {
	path, want := sample(t, 512)
	ovt.Shell(t, path, fmt.Sprintf(".dbconfig no_ckpt_on_close on\nINSERT INTO sectors VALUES (9, %s);\nDELETE FROM sectors WHERE sector = 15;", ovt.Fill(512, 'W')))
	if st, err := os.Stat(path + "-wal"); err != nil || st.Size() == 0 {
		t.Fatalf("the shell left no WAL: %v", err)
	}
	copy(want[9*512:], ovt.Pattern(512, 'W'))
	clear(want[15*512:])
	before := files(t, filepath.Dir(path))
	l, err := openvmmlayer.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	checkReads(t, l, want)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The -shm is SQLite's shared memory, which readers write too.
	after := files(t, filepath.Dir(path))
	delete(before, "openvmm.db-shm")
	if _, ok := after["openvmm.db-shm"]; !ok {
		t.Error("the -shm is gone")
	}
	delete(after, "openvmm.db-shm")
	if !maps(before, after) {
		t.Errorf("the directory changed: %v, then %v", keys(before), keys(after))
	}
	if got := ovt.Shell(t, path, "INSERT INTO sectors VALUES (10, NULL);\nPRAGMA integrity_check;\nSELECT count(*) FROM sectors;"); got != "ok\n9" {
		t.Errorf("the shell after Open: %q, want ok and 9 rows", got)
	}
}

// TestOpenWALWithoutShm: a file copied with its -wal but not its -shm is
// read through the WAL; the -shm SQLite has to make gets the file's mode.
func TestOpenWALWithoutShm(t *testing.T) {
	path, want := sample(t, 512)
	ovt.Shell(t, path, fmt.Sprintf(".dbconfig no_ckpt_on_close on\nINSERT INTO sectors VALUES (9, %s);", ovt.Fill(512, 'W')))
	copy(want[9*512:], ovt.Pattern(512, 'W'))
	if err := os.Remove(path + "-shm"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	l, err := openvmmlayer.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	checkReads(t, l, want)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path + "-shm"); err == nil && st.Mode().Perm() != 0o640 {
		t.Errorf("-shm has mode %v, want the file's 0640", st.Mode().Perm())
	}
}

func TestOpenRefusesDamage(t *testing.T) {
	ss := 512
	row := func(sector int, data string) string {
		return fmt.Sprintf("INSERT INTO sectors VALUES (%d, %s);", sector, data)
	}
	for _, c := range []struct {
		name, sql string
		want      error
		text      string // in the error
	}{
		{"no meta table", "DROP TABLE meta;", disklayer.ErrNotLayer, "no meta table"},
		{"no sectors table", "DROP TABLE sectors;", disklayer.ErrNotLayer, "no sectors table"},
		{"meta without row", "DELETE FROM meta;", disklayer.ErrCorrupt, "no row"},
		{"meta with two rows", "INSERT INTO meta SELECT metadata FROM meta;", disklayer.ErrCorrupt, "more than one row"},
		{"meta not JSON", "UPDATE meta SET metadata = 'sector_size=512';", disklayer.ErrCorrupt, "not the JSON"},
		{"meta lacks a field", `UPDATE meta SET metadata = '{"sector_count":16,"sector_size":512}';`, disklayer.ErrCorrupt, "lacks"},
		{"meta field of the wrong type", `UPDATE meta SET metadata = '{"logically_read_only":0,"sector_count":16,"sector_size":512}';`, disklayer.ErrCorrupt, "not the JSON"},
		{"sector size not a power of two", `UPDATE meta SET metadata = json_set(metadata, '$.sector_size', 1000);`, disklayer.ErrCorrupt, "sector_size 1000"},
		{"sector size too small", `UPDATE meta SET metadata = json_set(metadata, '$.sector_size', 256);`, disklayer.ErrCorrupt, "sector_size 256"},
		{"sector size too large", `UPDATE meta SET metadata = json_set(metadata, '$.sector_size', 131072);`, disklayer.ErrCorrupt, "sector_size 131072"},
		{"size too large", `UPDATE meta SET metadata = json_set(metadata, '$.sector_count', 4611686018427387904);`, disklayer.ErrCorrupt, "past the"},
		{"sector past the end", row(16, ovt.Fill(ss, 'X')), disklayer.ErrCorrupt, "sectors 1..16, outside the 16 sectors"},
		{"negative sector", row(-1, "NULL"), disklayer.ErrCorrupt, "outside the 16 sectors"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.db")
			ovt.Make(t, path, 16, ss, row(1, ovt.Fill(ss, 'A'))+c.sql)
			l, err := openvmmlayer.Open(path)
			if err == nil {
				l.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) || strings.Count(err.Error(), path) != 1 {
				t.Errorf("Open = %v\nwant an error wrapping %v that names the file once and says %q", err, c.want, c.text)
			}
		})
	}
}

// TestReadRefusesBadRows: rows OpenVMM would refuse to read are refused
// when read (ReadAt, Extents), not at Open, which does not scan the rows.
func TestReadRefusesBadRows(t *testing.T) {
	for _, data := range []string{ovt.Fill(511, 'S'), ovt.Fill(513, 'L'), "zeroblob(0)", "'text'", "42"} {
		t.Run(data, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.db")
			ovt.Make(t, path, 16, 512, fmt.Sprintf("INSERT INTO sectors VALUES (1, %s), (3, %s);", ovt.Fill(512, 'A'), data))
			l, err := openvmmlayer.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if _, err := l.ReadAt(make([]byte, 512), 0); err != nil {
				t.Errorf("ReadAt of a good sector: %v", err)
			}
			if _, err := l.ReadAt(make([]byte, 1024), 3*512); !errors.Is(err, disklayer.ErrCorrupt) || !strings.Contains(err.Error(), "sector 3 holds") {
				t.Errorf("ReadAt = %v, want ErrCorrupt naming sector 3", err)
			}
			var extErr error
			for _, err := range l.Extents(0, l.Size()) {
				extErr = err
			}
			if !errors.Is(extErr, disklayer.ErrCorrupt) {
				t.Errorf("Extents = %v, want ErrCorrupt", extErr)
			}
		})
	}
}

func TestOpenRefusesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw.img")
	if err := os.WriteFile(raw, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.db")
	ovt.Shell(t, other, "CREATE TABLE t (x);")
	for _, path := range []string{raw, other} {
		if _, err := openvmmlayer.Open(path); !errors.Is(err, disklayer.ErrNotLayer) {
			t.Errorf("Open(%s) = %v, want ErrNotLayer", filepath.Base(path), err)
		}
	}
	if _, err := openvmmlayer.Open(filepath.Join(dir, "missing.db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of a missing file = %v, want ErrNotExist", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("Open left files behind: %v", entries)
	}
}

func TestReadOnly(t *testing.T) {
	path, _ := sample(t, 512)
	l, err := openvmmlayer.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.WriteAt(make([]byte, 512), 0); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("WriteAt = %v, want ErrReadOnly", err)
	}
	if err := l.Zero(0, 512); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("Zero = %v, want ErrReadOnly", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.ReadAt(make([]byte, 512), 0); !errors.Is(err, disklayer.ErrClosed) {
		t.Errorf("ReadAt after Close = %v, want ErrClosed", err)
	}
}
