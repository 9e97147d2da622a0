package diffdisk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/rawlayer"
	ovt "github.com/hibdisk/hibdisk/internal/openvmmtest"
)

// openVMMBase makes base.db in dir with the sqlite3 shell: an OpenVMM
// file of count 512-byte sectors holding data in sectors 1 and mid, a
// NULL row in sector 2. It returns its path and content.
func openVMMBase(t *testing.T, dir string, count, mid int64) (string, []byte) {
	t.Helper()
	path := filepath.Join(dir, "base.db")
	ovt.Make(t, path, count, 512, fmt.Sprintf("INSERT INTO sectors VALUES (1, %s), (2, NULL), (%d, %s);", ovt.Fill(512, 'A'), mid, ovt.Fill(512, 'M')))
	want := make([]byte, count*512)
	copy(want[512:], ovt.Pattern(512, 'A'))
	copy(want[mid*512:], ovt.Pattern(512, 'M'))
	return path, want
}

func TestOpenVMMImage(t *testing.T) {
	dir := testDir(t)
	path, want := openVMMBase(t, dir, 2048, 100)
	d, err := OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, d)
	layers, err := d.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 || layers[0].Format != disklayer.FormatOpenVMM || layers[0].SectorSize != 512 || layers[0].Size != 1<<20 {
		t.Errorf("Layers = %+v, want one openvmm layer of 1 MiB in 512-byte sectors", layers)
	}
	if got := mustRead(t, d, 0, d.Size()); !bytes.Equal(got, want) {
		t.Error("OpenImage reads other content than the shell wrote")
	}
	if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("WriteAt = %v, want ErrReadOnly", err)
	}
}

// TestOpenVMMParent: a hibdisk diff layer over an OpenVMM base (what
// OpenVMM's `sqldiff:job:sql:base.db` stack is), written, read back
// after a reopen, and refused in the ways a raw base is.
func TestOpenVMMParent(t *testing.T) {
	dir := testDir(t)
	base, want := openVMMBase(t, dir, 2048, 100)
	job := filepath.Join(dir, "job.db")
	if err := Create(job, CreateOptions{Backing: base}); !errors.Is(err, disklayer.ErrForeignFormat) || !strings.Contains(err.Error(), "-F openvmm") {
		t.Errorf("create without -F: %v, want a refusal saying -F openvmm", err)
	}
	mustCreate(t, job, CreateOptions{Backing: base, BackingFormat: disklayer.FormatOpenVMM})
	d := mustOpen(t, job, Options{})
	layers, err := d.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ref := layers[0].Parent
	if ref == nil || ref.Format != disklayer.FormatOpenVMM || ref.Size != 1<<20 || !strings.HasPrefix(ref.Digest, rawlayer.DigestPrefix) ||
		!strings.HasPrefix(ref.SHA256, rawlayer.ContentPrefix) || ref.Stat == "" || layers[0].SectorSize != 4096 || layers[1].Format != disklayer.FormatOpenVMM {
		t.Fatalf("layers = %+v, parent %+v", layers, ref)
	}
	write := bytes.Repeat([]byte{0xc3}, 3000)
	mustWrite(t, d, write, 400) // across the base's sectors 0..6
	copy(want[400:], write)
	mustClose(t, d)
	if got := chainContent(t, job); !bytes.Equal(got, want) {
		t.Error("the chain reads other content than base plus the write")
	}
	if err := Commit(job, CommitOptions{}); !errors.Is(err, disklayer.ErrReadOnly) {
		t.Errorf("Commit into an OpenVMM parent = %v, want ErrReadOnly", err)
	}
	// The view's digest is the raw image's of the same content.
	raw := filepath.Join(dir, "view.img")
	if err := os.WriteFile(raw, mustReadImage(t, base), 0o644); err != nil {
		t.Fatal(err)
	}
	if sum, _, err := rawlayer.ContentDigest(raw); err != nil || sum != ref.SHA256 {
		t.Errorf("recorded content digest %s, the raw image of the view has %s (%v)", ref.SHA256, sum, err)
	}
}

func mustReadImage(t *testing.T, path string) []byte {
	t.Helper()
	d, err := OpenImage(path)
	if err != nil {
		t.Fatal(err)
	}
	defer mustClose(t, d)
	return mustRead(t, d, 0, d.Size())
}

// TestOpenVMMParentChanged: a change to the base after the child was
// made is refused: in the sampled part, in a part only the whole-content
// digest sees, and one still in the base's -wal. A touch that changes
// nothing is accepted, and the new file identity recorded.
func TestOpenVMMParentChanged(t *testing.T) {
	const count, mid = 64 << 11, 40000 // 64 MiB; sector mid lies between the digest's samples
	for _, c := range []struct{ name, sql, want string }{
		{"sampled", "UPDATE sectors SET data = " + ovt.Fill(512, 'Z') + " WHERE sector = 1;", "sha256-sampled:"},
		{"unsampled", "UPDATE sectors SET data = " + ovt.Fill(512, 'Z') + fmt.Sprintf(" WHERE sector = %d;", mid), "sha256-content:"},
		{"in the WAL", ".dbconfig no_ckpt_on_close on\nUPDATE sectors SET data = NULL WHERE sector = 1;", "sha256-sampled:"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := testDir(t)
			base, _ := openVMMBase(t, dir, count, mid)
			job := filepath.Join(dir, "job.db")
			mustCreate(t, job, CreateOptions{Backing: base, BackingFormat: disklayer.FormatOpenVMM})
			ovt.Shell(t, base, c.sql)
			parentBroken(job)
			_, err := Open(job, Options{})
			if !errors.Is(err, disklayer.ErrParentMismatch) || strings.Count(err.Error(), c.want) != 2 {
				t.Errorf("Open over a changed base: %v\nwant ErrParentMismatch naming two %s digests", err, c.want)
			}
		})
	}
	t.Run("touched", func(t *testing.T) {
		dir := testDir(t)
		base, _ := openVMMBase(t, dir, count, mid)
		job := filepath.Join(dir, "job.db")
		mustCreate(t, job, CreateOptions{Backing: base, BackingFormat: disklayer.FormatOpenVMM})
		later := time.Now().Add(time.Hour)
		if err := os.Chtimes(base, later, later); err != nil {
			t.Fatal(err)
		}
		mustClose(t, mustOpen(t, job, Options{}))
		d := mustOpen(t, job, Options{ReadOnly: true})
		defer mustClose(t, d)
		layers, _ := d.Layers()
		if stat, _ := openVMMStat(base); layers[0].Parent.Stat != stat {
			t.Errorf("recorded identity %q, the base now has %q", layers[0].Parent.Stat, stat)
		}
	})
}

// TestConvertOpenVMM: openvmm to hibdisk to openvmm, and to raw, keep the
// content; a chain over an OpenVMM base flattens into one OpenVMM file.
func TestConvertOpenVMM(t *testing.T) {
	dir := testDir(t)
	base, want := openVMMBase(t, dir, 2048, 100)
	steps := []struct{ src, dst, format string }{
		{base, "copy.db", disklayer.FormatHibdisk},
		{"copy.db", "back.db", disklayer.FormatOpenVMM},
		{"back.db", "back.img", disklayer.FormatRaw},
	}
	for _, s := range steps {
		src := filepath.Join(dir, filepath.Base(s.src))
		d, err := OpenImage(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := Convert(d, filepath.Join(dir, s.dst), ConvertOptions{Format: s.format, SectorSize: 512}); err != nil {
			t.Fatalf("convert %s to %s: %v", s.src, s.format, err)
		}
		mustClose(t, d)
		if got := mustReadImage(t, filepath.Join(dir, s.dst)); !bytes.Equal(got, want) {
			t.Errorf("%s reads other content", s.dst)
		}
	}
	if got, err := os.ReadFile(filepath.Join(dir, "back.img")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("back.img is not the base's content byte for byte (%v)", err)
	}
	// Only the non-zero sectors have rows: sector 2's NULL is no row.
	if got := ovt.Shell(t, filepath.Join(dir, "back.db"), "SELECT group_concat(sector) FROM sectors;"); got != "1,100" {
		t.Errorf("rows of back.db: %s, want 1,100", got)
	}
	if entries, _ := filepath.Glob(filepath.Join(dir, ".*partial*")); len(entries) != 0 {
		t.Errorf("convert left %v", entries)
	}
}
