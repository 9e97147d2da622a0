package sqlitelayer_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/store/storetest"
)

func TestCreateReopenPersists(t *testing.T) {
	dir := t.TempDir()
	path := checkedLayer(t, filepath.Join(dir, "child.hibdisk"))
	parent := rawParent(t, dir, 1<<20)
	before := time.Now().UTC().Add(-time.Second)
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20, SectorSize: 512, Parent: parent, Label: "booted"})
	if err != nil {
		t.Fatal(err)
	}
	data := fill(3000, 9)
	mustWrite(t, f, data, 700)
	mustWrite(t, f.Hibernate(), fill(512, 3), 1<<40)
	info := f.Info()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(info.UUID) {
		t.Errorf("uuid %q is not a random (v4) UUID", info.UUID)
	}
	if info.CreatedAt.Before(before) || info.CreatedAt.After(time.Now()) || info.CreatedAt.Location() != time.UTC {
		t.Errorf("created_at %v is not now in UTC", info.CreatedAt)
	}
	// A new layer is generation 1; the batch Close committed is its
	// first content change.
	want := sqlitelayer.Info{UUID: info.UUID, SectorSize: 512, DiskSize: 1 << 20, Parent: parent, CreatedAt: info.CreatedAt, Label: "booted", Generation: 1}
	if diff := cmp.Diff(want, info); diff != "" {
		t.Errorf("Info after create (-want +got):\n%s", diff)
	}
	want.Generation = 2

	g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true, Strict: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if diff := cmp.Diff(want, g.Info()); diff != "" {
		t.Errorf("Info after reopen (-want +got):\n%s", diff)
	}
	if got := mustRead(t, g, 700, len(data)); !bytes.Equal(got, data) {
		t.Error("data written before close does not read back after reopen")
	}
	if got := mustRead(t, g.Hibernate(), 1<<40, 512); !bytes.Equal(got, fill(512, 3)) {
		t.Error("hibernate block does not read back after reopen")
	}
	var created string
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT created_at FROM layer")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	if stmt.Step() {
		created = stmt.ColumnText(0)
	}
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`).MatchString(created) {
		t.Errorf("created_at stored as %q, want RFC 3339 UTC", created)
	}
}

func TestCreateValidates(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		opts sqlitelayer.CreateOptions
	}{
		{"sector size not a power of two", sqlitelayer.CreateOptions{Size: 3000 * 10, SectorSize: 3000}},
		{"sector size too small", sqlitelayer.CreateOptions{Size: 4096, SectorSize: 256}},
		{"sector size too large", sqlitelayer.CreateOptions{Size: 1 << 20, SectorSize: 1 << 17}},
		{"size not a multiple", sqlitelayer.CreateOptions{Size: 4097}},
		{"negative size", sqlitelayer.CreateOptions{Size: -4096}},
		{"parent without path", sqlitelayer.CreateOptions{Size: 4096, Parent: &disklayer.ParentRef{Format: "raw", Size: 4096}}},
		{"parent with unknown format", sqlitelayer.CreateOptions{Size: 4096, Parent: &disklayer.ParentRef{Path: "p", Format: "qcow3", Size: 4096}}},
		{"hibdisk parent without uuid", sqlitelayer.CreateOptions{Size: 4096, Parent: &disklayer.ParentRef{Path: "p", Format: "hibdisk", Size: 4096}}},
		{"raw parent with uuid", sqlitelayer.CreateOptions{Size: 4096, Parent: &disklayer.ParentRef{Path: "p", Format: "raw", UUID: "x", Size: 4096}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			f, err := sqlitelayer.Create(path, tt.opts)
			if !errors.Is(err, disklayer.ErrInvalid) {
				t.Errorf("Create: %v, want ErrInvalid", err)
			}
			if f != nil {
				f.Close()
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused Create left a file behind: %v", err)
			}
		})
	}
	t.Run("existing path", func(t *testing.T) {
		path := filepath.Join(dir, "existing")
		if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 4096}); !errors.Is(err, os.ErrExist) {
			t.Errorf("Create over an existing file: %v, want os.ErrExist", err)
		}
		if b, _ := os.ReadFile(path); string(b) != "keep me" {
			t.Error("Create changed the existing file")
		}
	})
}

func TestOpenRefusesDamagedFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := filepath.Join(dir, "plain.db")
	storetest.Exec(t, plain, "CREATE TABLE sectors (sector INTEGER PRIMARY KEY, data BLOB)")

	newer := filepath.Join(dir, "newer.hibdisk")
	createLayer(t, newer, sqlitelayer.CreateOptions{Size: 1 << 20}).Close()
	storetest.Exec(t, newer, "PRAGMA user_version=99")

	truncated := filepath.Join(dir, "truncated.hibdisk")
	f := createLayer(t, truncated, sqlitelayer.CreateOptions{Size: 4 << 20})
	mustWrite(t, f, fill(4<<20, 1), 0)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(truncated)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(truncated, st.Size()/2); err != nil {
		t.Fatal(err)
	}

	noRow := filepath.Join(dir, "norow.hibdisk")
	createLayer(t, noRow, sqlitelayer.CreateOptions{Size: 1 << 20}).Close()
	storetest.Exec(t, noRow, "DELETE FROM layer")

	badRow := filepath.Join(dir, "badrow.hibdisk")
	createLayer(t, badRow, sqlitelayer.CreateOptions{Size: 1 << 20}).Close()
	storetest.Exec(t, badRow, "UPDATE layer SET sector_size = 1000")

	random := make([]byte, 8192)
	for i := range random {
		random[i] = byte(i*131 + i>>3)
	}
	header := append([]byte("SQLite format 3\x00"), random[16:]...)

	tests := []struct {
		name string
		path string
		want error
	}{
		{"empty file", write("empty", nil), disklayer.ErrNotLayer},
		{"random bytes", write("random", random), disklayer.ErrNotLayer},
		{"SQLite header then garbage", write("garbage", header), nil}, // any of the sentinels, checked below
		{"plain SQLite database", plain, disklayer.ErrNotLayer},
		{"newer schema", newer, disklayer.ErrUnsupportedVersion},
		{"truncated to half", truncated, disklayer.ErrCorrupt},
		{"no layer row", noRow, disklayer.ErrCorrupt},
		{"invalid sector size", badRow, disklayer.ErrCorrupt},
		{"missing", filepath.Join(dir, "missing"), os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, ro := range []bool{true, false} {
				f, err := sqlitelayer.Open(tt.path, sqlitelayer.OpenOptions{ReadOnly: ro})
				if f != nil {
					f.Close()
					t.Fatalf("Open(read-only=%v) succeeded", ro)
				}
				if tt.want == nil {
					if !errors.Is(err, disklayer.ErrNotLayer) && !errors.Is(err, disklayer.ErrCorrupt) {
						t.Errorf("Open(read-only=%v): %v, want ErrNotLayer or ErrCorrupt", ro, err)
					}
				} else if !errors.Is(err, tt.want) {
					t.Errorf("Open(read-only=%v): %v, want %v", ro, err, tt.want)
				}
				if err != nil && !strings.Contains(err.Error(), tt.path) {
					t.Errorf("error %q does not name the file", err)
				}
			}
		})
	}
	if ok, err := sqlitelayer.IsLayer(newer); !ok || err != nil {
		t.Errorf("IsLayer(layer) = %v, %v", ok, err)
	}
	for _, p := range []string{plain, filepath.Join(dir, "empty"), filepath.Join(dir, "random")} {
		if ok, err := sqlitelayer.IsLayer(p); ok || err != nil {
			t.Errorf("IsLayer(%s) = %v, %v; want false, nil", p, ok, err)
		}
	}
}

func TestZeroSectorsAreNeverData(t *testing.T) {
	for _, withParent := range []bool{false, true} {
		name := "base"
		if withParent {
			name = "with parent"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := checkedLayer(t, filepath.Join(dir, "l.hibdisk"))
			opts := sqlitelayer.CreateOptions{Size: 64 * 4096}
			if withParent {
				opts.Parent = rawParent(t, dir, opts.Size)
			}
			f := createLayer(t, path, opts)
			mustWrite(t, f, fill(8*4096, 1), 0)            // sectors 0-7 data
			mustWrite(t, f, make([]byte, 2*4096), 2*4096)  // 2, 3 zero
			mustWrite(t, f, make([]byte, 4096), 20*4096)   // 20: zero, never written
			mustWrite(t, f, make([]byte, 100), 5*4096+10)  // 5 keeps data
			mustWrite(t, f, make([]byte, 4096-10), 6*4096) // 6 partly zero: data
			mustWrite(t, f, make([]byte, 10), 6*4096+4086) // 6 now all zero
			if err := f.Zero(7*4096, 4096); err != nil {   // 7 zeroed whole
				t.Fatal(err)
			}
			if err := f.Zero(30*4096+1, 3*4096); err != nil { // 31, 32 whole; 30, 33 partial
				t.Fatal(err)
			}
			mustWrite(t, f.Hibernate(), fill(4096, 2), 0)
			mustWrite(t, f.Hibernate(), make([]byte, 4096), 0)
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			zero := "null"
			if !withParent {
				zero = ""
			}
			want := map[int64]string{0: "data", 1: "data", 2: zero, 3: zero, 4: "data", 5: "data", 6: zero, 7: zero, 20: zero, 30: zero, 31: zero, 32: zero, 33: zero}
			for k, v := range want {
				if v == "" {
					delete(want, k)
				}
			}
			if diff := cmp.Diff(want, rowKinds(t, path, "sectors")); diff != "" {
				t.Errorf("sectors rows (-want +got):\n%s", diff)
			}
			wantHib := map[int64]string{0: "null"}
			if !withParent {
				wantHib = map[int64]string{}
			}
			if diff := cmp.Diff(wantHib, rowKinds(t, path, "hibernate_blocks")); diff != "" {
				t.Errorf("hibernate_blocks rows (-want +got):\n%s", diff)
			}
			st, err := f.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if st.DataSectors != 4 || st.DataBlocks != 0 {
				t.Errorf("Stats = %+v, want 4 data sectors and no data blocks", st)
			}
		})
	}
}

func TestUnalignedReadModifyWrite(t *testing.T) {
	path := newLayerPath(t, "l.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 16 * 512, SectorSize: 512})
	model := make([]byte, f.Size())
	write := func(p []byte, off int64) {
		mustWrite(t, f, p, off)
		copy(model[off:], p)
	}
	write(fill(1000, 1), 100)  // spans sectors 0-2, both ends partial
	write(fill(10, 2), 2000)   // inside sector 3
	write(fill(512, 3), 512*5) // aligned
	write(fill(700, 4), 512*5+300)
	if err := f.Zero(150, 20); err != nil {
		t.Fatal(err)
	}
	clear(model[150:170])
	for off := int64(0); off < f.Size(); off += 77 {
		n := min(333, f.Size()-off)
		if got := mustRead(t, f, off, int(n)); !bytes.Equal(got, model[off:off+n]) {
			t.Fatalf("read %d at %d differs from the model", n, off)
		}
	}
}

func TestReadOnly(t *testing.T) {
	path := newLayerPath(t, "l.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20})
	mustWrite(t, f, fill(4096, 1), 0)
	if err := f.SetReadOnly(true); err != nil {
		t.Fatal(err)
	}
	refused := func(what string, f *sqlitelayer.File) {
		t.Helper()
		for name, err := range map[string]error{
			"write":     func() error { _, err := f.WriteAt(fill(4096, 2), 0); return err }(),
			"zero":      f.Zero(0, 4096),
			"label":     f.SetLabel("x"),
			"resize":    f.Resize(2 << 20),
			"hibernate": func() error { _, err := f.Hibernate().WriteAt(fill(4096, 2), 0); return err }(),
			"fill":      f.FillAbsent(fill(4096, 2), 8192),
		} {
			if !errors.Is(err, disklayer.ErrReadOnly) {
				t.Errorf("%s: %s: %v, want ErrReadOnly", what, name, err)
			}
		}
		if got := mustRead(t, f, 0, 4096); !bytes.Equal(got, fill(4096, 1)) {
			t.Errorf("%s: a refused write changed the data", what)
		}
	}
	refused("marked read-only", f)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !g.Info().ReadOnly {
		t.Error("read_only did not persist")
	}
	refused("reopened marked read-only", g)
	if err := g.SetReadOnly(false); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, g, fill(4096, 3), 0)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}

	h, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.SetReadOnly(false); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("SetReadOnly on a read-only open: %v, want ErrReadOnly", err)
	}
	if _, err := h.WriteAt(fill(4096, 2), 0); !errors.Is(err, disklayer.ErrReadOnly) || !strings.Contains(err.Error(), path) {
		t.Errorf("write to a read-only open: %v, want ErrReadOnly naming the file", err)
	}
	if got := mustRead(t, h, 0, 4096); !bytes.Equal(got, fill(4096, 3)) {
		t.Error("write after clearing read_only did not persist")
	}
}

func TestResize(t *testing.T) {
	dir := t.TempDir()
	path := checkedLayer(t, filepath.Join(dir, "l.hibdisk"))
	parent := rawParent(t, dir, 16*4096)
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 16 * 4096, Parent: parent})
	mustWrite(t, f, fill(16*4096, 1), 0)
	if err := f.Resize(10 * 4096); err != nil {
		t.Fatal(err)
	}
	if f.Size() != 10*4096 || f.Info().DiskSize != 10*4096 {
		t.Errorf("size after shrink: %d, info %d", f.Size(), f.Info().DiskSize)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 10*4096); !errors.Is(err, disklayer.ErrOutOfRange) {
		t.Errorf("read past the new end: %v, want ErrOutOfRange", err)
	}
	// Growing again must not let the parent's sectors 10-15 show through:
	// they become tombstones; 16-19 lie past the parent and stay absent.
	if err := f.Resize(20 * 4096); err != nil {
		t.Fatal(err)
	}
	rows := rowKinds(t, path, "sectors")
	for k := int64(0); k < 20; k++ {
		want := ""
		switch {
		case k < 10:
			want = "data"
		case k < 16:
			want = "null"
		}
		if rows[k] != want {
			t.Errorf("sector %d after shrink and grow: row %q, want %q", k, rows[k], want)
		}
	}
	if err := f.Resize(20*4096 + 1); !errors.Is(err, disklayer.ErrInvalid) {
		t.Errorf("resize to a partial sector: %v, want ErrInvalid", err)
	}
	f.Close()
	g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Size() != 20*4096 {
		t.Errorf("size after reopen %d, want %d", g.Size(), 20*4096)
	}
}

func TestSetParentAndLabel(t *testing.T) {
	dir := t.TempDir()
	path := checkedLayer(t, filepath.Join(dir, "l.hibdisk"))
	parent := rawParent(t, dir, 8*4096)
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 8 * 4096, Parent: parent})
	mustWrite(t, f, fill(4096, 1), 0)
	if err := f.Zero(4096, 2*4096); err != nil {
		t.Fatal(err)
	}
	if err := f.SetLabel("golden"); err != nil {
		t.Fatal(err)
	}
	if err := f.SetParent(&disklayer.ParentRef{Path: "x", Format: "nope"}); !errors.Is(err, disklayer.ErrInvalid) {
		t.Errorf("SetParent with a bad ref: %v, want ErrInvalid", err)
	}
	if err := f.SetParent(nil); err != nil {
		t.Fatal(err)
	}
	if info := f.Info(); info.Parent != nil || info.Label != "golden" {
		t.Errorf("Info = %+v, want no parent and label golden", info)
	}
	if diff := cmp.Diff(map[int64]string{0: "data"}, rowKinds(t, path, "sectors")); diff != "" {
		t.Errorf("a base keeps no tombstones (-want +got):\n%s", diff)
	}
	// Zeros written to what is now a base leave no rows.
	mustWrite(t, f, make([]byte, 4096), 0)
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if rows := rowKinds(t, path, "sectors"); len(rows) != 0 {
		t.Errorf("rows after zeroing a base: %v", rows)
	}
}

func TestAbsorb(t *testing.T) {
	for _, baseHasParent := range []bool{false, true} {
		name := "into base"
		if baseHasParent {
			name = "into diff layer"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			ppath := checkedLayer(t, filepath.Join(dir, "parent.hibdisk"))
			cpath := checkedLayer(t, filepath.Join(dir, "child.hibdisk"))
			popts := sqlitelayer.CreateOptions{Size: 8 * 4096}
			if baseHasParent {
				popts.Parent = rawParent(t, dir, 8*4096)
			}
			p := createLayer(t, ppath, popts)
			mustWrite(t, p, fill(4*4096, 1), 0) // parent: sectors 0-3 data
			mustWrite(t, p.Hibernate(), fill(4096, 1), 0)
			pinfo := p.Info()
			c := createLayer(t, cpath, sqlitelayer.CreateOptions{Size: 12 * 4096, Parent: &disklayer.ParentRef{
				Path: "parent.hibdisk", Format: disklayer.FormatHibdisk, UUID: pinfo.UUID, Size: pinfo.DiskSize,
			}})
			mustWrite(t, c, fill(4096, 2), 1*4096)  // replaces parent data
			mustWrite(t, c, fill(4096, 3), 6*4096)  // new data
			mustWrite(t, c, fill(4096, 4), 10*4096) // past the parent's old end
			if err := c.Zero(2*4096, 4096); err != nil {
				t.Fatal(err) // tombstone over parent data
			}
			if err := c.Zero(7*4096, 4096); err != nil {
				t.Fatal(err) // tombstone over nothing
			}
			mustWrite(t, c.Hibernate(), fill(4096, 5), 4096)
			if err := c.Hibernate().Zero(0, 4096); err != nil {
				t.Fatal(err)
			}
			// The child's batch is not flushed: Absorb must flush it.
			if err := p.Absorb(c); err != nil {
				t.Fatal(err)
			}
			if p.Size() != 12*4096 {
				t.Errorf("parent size %d after absorbing a larger child, want %d", p.Size(), 12*4096)
			}
			if ref := c.Info().Parent; ref.Size != 12*4096 {
				t.Errorf("child's parent_size %d after Absorb grew the parent, want %d", ref.Size, 12*4096)
			}
			want := map[int64]string{0: "data", 1: "data", 2: "null", 3: "data", 6: "data", 7: "null", 10: "data"}
			wantHib := map[int64]string{0: "null", 1: "data"}
			if !baseHasParent {
				delete(want, 2)
				delete(want, 7)
				delete(wantHib, 0)
			}
			if diff := cmp.Diff(want, rowKinds(t, ppath, "sectors")); diff != "" {
				t.Errorf("parent sectors after Absorb (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(wantHib, rowKinds(t, ppath, "hibernate_blocks")); diff != "" {
				t.Errorf("parent hibernate_blocks after Absorb (-want +got):\n%s", diff)
			}
			parentData := fill(4*4096, 1)
			for k, want := range map[int64][]byte{
				0: parentData[:4096], 1: fill(4096, 2), 2: make([]byte, 4096),
				3: parentData[3*4096:], 6: fill(4096, 3), 10: fill(4096, 4),
			} {
				if got := mustRead(t, p, k*4096, 4096); !bytes.Equal(got, want) {
					t.Errorf("parent sector %d after Absorb differs", k)
				}
			}
			// Absorbing a layer that is not a child is refused.
			other := createLayer(t, checkedLayer(t, filepath.Join(dir, "other.hibdisk")), sqlitelayer.CreateOptions{Size: 8 * 4096})
			if err := p.Absorb(other); !errors.Is(err, disklayer.ErrParentMismatch) {
				t.Errorf("Absorb of an unrelated layer: %v, want ErrParentMismatch", err)
			}
		})
	}
}

func TestHibernateView(t *testing.T) {
	path := newLayerPath(t, "l.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 1 << 20})
	h := f.Hibernate()
	if h.Size() != sqlitelayer.HibernateSize || h.SectorSize() != 4096 {
		t.Errorf("hibernate geometry %d/%d", h.Size(), h.SectorSize())
	}
	mustWrite(t, h, fill(10000, 7), 1<<45+100)
	if got := mustRead(t, f, 0, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Error("a hibernate write shows up on the disk")
	}
	if err := f.Flush(); err != nil { // the shared batch
		t.Fatal(err)
	}
	if n := len(rowKinds(t, path, "hibernate_blocks")); n != 3 { // bytes 100..10100 of the block range
		t.Errorf("%d hibernate rows after Flush, want 3", n)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ReadAt(make([]byte, 10), 0); !errors.Is(err, disklayer.ErrClosed) {
		t.Errorf("read from a closed hibernate view: %v, want ErrClosed", err)
	}
	mustWrite(t, f, fill(4096, 1), 0) // the File is still open
	if _, err := h.WriteAt(make([]byte, 1), sqlitelayer.HibernateSize); !errors.Is(err, disklayer.ErrOutOfRange) {
		t.Errorf("write past the hibernate file: %v, want ErrOutOfRange", err)
	}
}

// TestFailedWritesAreNeverSilent fills a layer past a page limit set on
// its own connection, so SQLite fails writes with SQLITE_FULL. Whatever
// SQLite rolls back (the statement or the whole batch), every write that
// was acknowledged must read back after a successful Flush; otherwise
// the Flush must fail and reads of the lost writes too.
func TestFailedWritesAreNeverSilent(t *testing.T) {
	path := newLayerPath(t, "l.hibdisk")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := sqlitelayer.ExecForTest(f, "PRAGMA max_page_count = 300"); err != nil {
		t.Fatal(err)
	}
	var acked []int64
	var failure error
	for i := int64(0); i < 1000; i++ {
		if _, err := f.WriteAt(fill(64<<10, byte(i)), i*64<<10); err != nil {
			failure = err
			break
		}
		acked = append(acked, i)
	}
	if failure == nil {
		t.Fatal("no write failed: the page limit did not take effect")
	}
	if !errors.Is(failure, sqlite3.FULL) {
		t.Errorf("write error %v does not wrap SQLITE_FULL", failure)
	}
	if err := f.Flush(); err != nil {
		if _, rerr := f.ReadAt(make([]byte, 1), 0); rerr == nil {
			t.Errorf("Flush failed (%v) but a later read of a lost write succeeded", err)
		}
		f.Close()
		return
	}
	for _, i := range acked {
		if got := mustRead(t, f, i*64<<10, 64<<10); !bytes.Equal(got, fill(64<<10, byte(i))) {
			t.Fatalf("acknowledged write %d lost although Flush succeeded", i)
		}
	}
	if err := sqlitelayer.ExecForTest(f, "PRAGMA max_page_count = 1000000"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentReadYourWrites runs writers and readers on many
// goroutines: every reader checks that a sector a writer has finished
// writing reads back, whether or not it was flushed.
func TestConcurrentReadYourWrites(t *testing.T) {
	for _, writeBack := range []bool{false, true} {
		t.Run(fmt.Sprintf("write-back=%v", writeBack), func(t *testing.T) {
			path := newLayerPath(t, "l.hibdisk")
			opts := sqlitelayer.CreateOptions{Size: 256 * 4096}
			var f *sqlitelayer.File
			if writeBack {
				f = createWriteBack(t, path, opts)
				t.Cleanup(func() { f.Close() })
			} else {
				f = createLayer(t, path, opts)
			}
			concurrentReadYourWrites(t, f)
		})
	}
}

func concurrentReadYourWrites(t *testing.T, f *sqlitelayer.File) {
	sectorData := func(round int, s int64) []byte { return fill(4096, byte(round*7+int(s))) }
	// Each writer owns a slice of sectors; last[s] is the round last
	// written to sector s (-1: none), guarded by written[s].
	var written [256]sync.Mutex
	var last [256]int
	for s := range last {
		last[s] = -1
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 20 {
				for s := int64(w); s < 256; s += 4 {
					written[s].Lock()
					data := sectorData(round, s)
					if _, err := f.WriteAt(data, s*4096); err != nil {
						errs <- err
						written[s].Unlock()
						return
					}
					last[s] = round
					got := make([]byte, 4096)
					if _, err := f.ReadAt(got, s*4096); err != nil || !bytes.Equal(got, data) {
						errs <- errors.New("read after write on the same goroutine differs")
						written[s].Unlock()
						return
					}
					written[s].Unlock()
				}
				if round%5 == 4 {
					if err := f.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	// Readers on other goroutines lock the sector, so the write they see
	// completed before their read started, and must read it.
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([]byte, 4096)
			for i := range 2000 {
				s := int64(i*37+r*11) % 256
				written[s].Lock()
				_, err := f.ReadAt(got, s*4096)
				want := make([]byte, 4096)
				if last[s] >= 0 {
					want = sectorData(last[s], s)
				}
				written[s].Unlock()
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, want) {
					errs <- fmt.Errorf("sector %d read on another goroutine is not its last completed write", s)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	final := make([]byte, 4096)
	for s := int64(0); s < 256; s++ {
		if _, err := f.ReadAt(final, s*4096); err != nil || !bytes.Equal(final, sectorData(19, s)) {
			t.Fatalf("sector %d does not hold its last write", s)
		}
	}
}

func TestClosedFile(t *testing.T) {
	path := newLayerPath(t, "l.hibdisk")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"close":  f.Close(),
		"flush":  f.Flush(),
		"label":  f.SetLabel("x"),
		"write":  func() error { _, err := f.WriteAt(make([]byte, 1), 0); return err }(),
		"read":   func() error { _, err := f.ReadAt(make([]byte, 1), 0); return err }(),
		"absorb": f.Absorb(f),
	} {
		if !errors.Is(err, disklayer.ErrClosed) && !(name == "absorb" && err != nil) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	if _, err := f.Stats(); !errors.Is(err, disklayer.ErrClosed) {
		t.Errorf("Stats after Close: %v, want ErrClosed", err)
	}
}

func TestStrictOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 4 * 4096})
	mustWrite(t, f, fill(4096, 1), 0)
	f.Close()
	storetest.Exec(t, path, "INSERT INTO sectors VALUES (99, x'00')")
	if _, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{Strict: true}); !errors.Is(err, disklayer.ErrCorrupt) {
		t.Errorf("strict open of a damaged layer: %v, want ErrCorrupt", err)
	}
	g, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{})
	if err != nil {
		t.Fatalf("non-strict open of a layer with a bad row out of range: %v", err)
	}
	g.Close()
}

func TestExtentsWhileWriting(t *testing.T) {
	// Extents reads in chunks and releases the lock between them: the
	// consumer may call back into the layer.
	path := newLayerPath(t, "l.hibdisk")
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: 20000 * 512, SectorSize: 512})
	for s := int64(0); s < 20000; s += 2 {
		mustWrite(t, f, fill(512, 1), s*512)
	}
	var kinds []disklayer.ExtentKind
	var n int
	for e, err := range f.Extents(0, f.Size()) {
		if err != nil {
			t.Fatal(err)
		}
		if n < 4 {
			kinds = append(kinds, e.Kind)
		}
		n++
		if n == 5000 {
			mustWrite(t, f, fill(512, 2), 19999*512) // would deadlock if the lock were held
		}
	}
	// The write landed past the chunk being consumed, so the map shows it:
	// sectors 19998 and 19999 merge into one data extent.
	if n != 19999 || !slices.Equal(kinds, []disklayer.ExtentKind{disklayer.Data, disklayer.Absent, disklayer.Data, disklayer.Absent}) {
		t.Errorf("%d extents starting %v, want 19999 alternating data/absent", n, kinds)
	}
}

// TestWALStaysBounded: under sustained writes with no flush, the WAL
// starts over instead of growing with the data written. A background
// checkpoint alone never catches up with a busy writer: before the fix a
// 1 GiB disk grew a 3.5 GB WAL under fio.
func TestWALStaysBounded(t *testing.T) {
	path := newLayerPath(t, "w.db")
	const diskSize = 256 << 20
	f := createLayer(t, path, sqlitelayer.CreateOptions{Size: diskSize})
	sector := fill(4096, 3)
	rng := rand.New(rand.NewPCG(1, 2))
	written := int64(0)
	maxWAL := int64(0)
	for i := 0; written < 3*sqlitelayer.WALLimitBytes; i++ {
		sector[0] = byte(i) | 1 // every write changes the data
		mustWrite(t, f, sector, rng.Int64N(diskSize/4096)*4096)
		written += int64(len(sector))
		if i%256 == 0 {
			if fi, err := os.Stat(path + "-wal"); err == nil {
				maxWAL = max(maxWAL, fi.Size())
			}
		}
	}
	// The WAL may pass the limit by what commits before the wait: a batch
	// and its b-tree pages.
	if limit := int64(sqlitelayer.WALLimitBytes + 3*sqlitelayer.BatchBytes); maxWAL > limit {
		t.Fatalf("after %d MiB of writes the WAL reached %d MiB, want at most %d MiB", written>>20, maxWAL>>20, limit>>20)
	}
	t.Logf("after %d MiB of writes the WAL reached %d MiB", written>>20, maxWAL>>20)
}

// TestWriteBackFailureIsNeverSilent: with write-back, a write that fails
// for lack of space when it is applied has already returned; the failure
// must then come out of the next Flush, never vanish, and the lost
// sectors must not read back their older content. After that Flush,
// writes are accepted again (TestHostDiskFull covers the rest).
func TestWriteBackFailureIsNeverSilent(t *testing.T) {
	f := createWriteBack(t, newLayerPath(t, "l.hibdisk"), sqlitelayer.CreateOptions{Size: 64 << 20})
	if err := sqlitelayer.ExecForTest(f, "PRAGMA max_page_count = 300"); err != nil {
		t.Fatal(err)
	}
	var writeErr error
	for i := int64(0); i < 1000 && writeErr == nil; i++ {
		_, writeErr = f.WriteAt(fill(64<<10, byte(i)), i*64<<10)
	}
	flushErr := f.Flush()
	if flushErr == nil {
		t.Fatalf("64 MiB written into a 1.2 MiB page limit, yet Flush succeeded (last write error: %v)", writeErr)
	}
	if !errors.Is(flushErr, sqlite3.FULL) && !errors.Is(writeErr, sqlite3.FULL) {
		t.Errorf("neither the write error (%v) nor the flush error (%v) wraps SQLITE_FULL", writeErr, flushErr)
	}
	if !errors.Is(flushErr, disklayer.ErrNoSpace) {
		t.Errorf("flush error %v does not wrap ErrNoSpace", flushErr)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 0); !errors.Is(err, disklayer.ErrWriteLost) {
		t.Errorf("a read of a lost write after the failed flush: %v, want ErrWriteLost", err)
	}
	mustWrite(t, f, fill(4096, 9), 0)
	if err := f.Flush(); err != nil {
		t.Errorf("a small write after the reported loss did not flush: %v", err)
	}
	if got := mustRead(t, f, 0, 4096); !bytes.Equal(got, fill(4096, 9)) {
		t.Error("the write after the reported loss does not read back")
	}
	if err := sqlitelayer.ExecForTest(f, "PRAGMA max_page_count = 1000000"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWriteBackReadsAndMapsSeeWrites: with write-back, reads, maps and
// zeroing see every write that returned, applied or not.
func TestWriteBackReadsAndMapsSeeWrites(t *testing.T) {
	path := newLayerPath(t, "l.hibdisk")
	f := createWriteBack(t, path, sqlitelayer.CreateOptions{Size: 16 << 20, Parent: rawParent(t, filepath.Dir(path), 16<<20)})
	defer f.Close()
	for i := range int64(64) {
		off := i * 3 * 4096
		data := fill(4096, byte(i))
		mustWrite(t, f, data, off)
		if got := mustRead(t, f, off, 4096); !bytes.Equal(got, data) {
			t.Fatalf("write %d does not read back", i)
		}
		var kinds []disklayer.ExtentKind
		for e, err := range f.Extents(off, 4096) {
			if err != nil {
				t.Fatal(err)
			}
			kinds = append(kinds, e.Kind)
		}
		if !slices.Equal(kinds, []disklayer.ExtentKind{disklayer.Data}) {
			t.Fatalf("write %d maps as %v, want data", i, kinds)
		}
		if i%2 == 0 {
			if err := f.Zero(off, 4096); err != nil {
				t.Fatal(err)
			}
			if got := mustRead(t, f, off, 4096); !bytes.Equal(got, make([]byte, 4096)) {
				t.Fatalf("zeroed write %d still reads its data", i)
			}
		}
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	rows := rowKinds(t, path, "sectors")
	for i := range int64(64) {
		want := "data"
		if i%2 == 0 {
			want = "null"
		}
		if got := rows[i*3]; got != want {
			t.Fatalf("after Flush sector %d is %q, want %q", i*3, got, want)
		}
	}
}

// Zeros written through write-back are held without a copy and stored as
// tombstones (diff layer) or no rows (base layer); data written over them
// while pending, and zeros over pending data, must both win. Tombstoning
// a range where every row exists takes one UPDATE, a partly filled one
// the upserts, and zeros over tombstones change nothing: all are checked
// against the rows.
func TestWriteBackZeroWrites(t *testing.T) {
	const bs = 4096
	for _, diff := range []bool{true, false} {
		t.Run(fmt.Sprintf("diff=%v", diff), func(t *testing.T) {
			path := newLayerPath(t, "l.hibdisk")
			opts := sqlitelayer.CreateOptions{Size: 16 << 20}
			if diff {
				opts.Parent = rawParent(t, filepath.Dir(path), 16<<20)
			}
			f := createWriteBack(t, path, opts)
			defer f.Close()
			// 64 blocks: even zero, odd data; then the opposite over it.
			mixed := func(evenData bool, seed byte) []byte {
				p := make([]byte, 64*bs)
				for i := range 64 {
					if (i%2 == 0) == evenData {
						copy(p[i*bs:], fill(bs, seed+byte(i)))
					}
				}
				return p
			}
			mustWrite(t, f, mixed(false, 1), 0)
			want := mixed(true, 2)
			mustWrite(t, f, want, 0)
			if got := mustRead(t, f, 0, len(want)); !bytes.Equal(got, want) {
				t.Fatal("blocks rewritten while pending do not read back")
			}
			// Blocks 64-127 all get rows, then all become zero (one
			// UPDATE); blocks 128-191 get rows on every other block,
			// then all become zero (the upserts).
			mustWrite(t, f, bytes.Repeat(fill(bs, 9), 64), 64*bs)
			for i := int64(128); i < 192; i += 2 {
				mustWrite(t, f, fill(bs, byte(i)), i*bs)
			}
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, f, make([]byte, 128*bs), 64*bs)
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := mustRead(t, f, 0, 192*bs); !bytes.Equal(got[:64*bs], want) || !bytes.Equal(got[64*bs:], make([]byte, 128*bs)) {
				t.Fatal("content after flush is wrong")
			}
			// Zeros over zeros change no row of the table (the one change
			// is the batch's commit bumping the generation). Then blocks 192-255: 192-207
			// become tombstones, 208-223 data, 224-255 have no row, and
			// zeros over all of them.
			before := sqlitelayer.TotalChangesForTest(f)
			mustWrite(t, f, make([]byte, 128*bs), 64*bs)
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			if changed := sqlitelayer.TotalChangesForTest(f) - before; changed > 1 {
				t.Errorf("zeros written over zeros changed %d rows, want only the generation's", changed)
			}
			mustWrite(t, f, make([]byte, 16*bs), 192*bs)
			mustWrite(t, f, bytes.Repeat(fill(bs, 7), 16), 208*bs)
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			mustWrite(t, f, make([]byte, 64*bs), 192*bs)
			if err := f.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := mustRead(t, f, 0, 256*bs); !bytes.Equal(got[:64*bs], want) || !bytes.Equal(got[64*bs:], make([]byte, 192*bs)) {
				t.Fatal("content after zeros over a mixed range is wrong")
			}
			rows := rowKinds(t, path, "sectors")
			for i := range int64(256) {
				wantKind := ""
				switch {
				case i < 64 && i%2 == 0:
					wantKind = "data"
				case diff:
					wantKind = "null"
				}
				if got := rows[i]; got != wantKind {
					t.Fatalf("sector %d is %q, want %q", i, got, wantKind)
				}
			}
		})
	}
}
