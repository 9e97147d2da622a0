package diffdisk

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// refusesChangedBase asserts that the chain at child no longer opens and
// that Check reports the change, naming want.
func refusesChangedBase(t *testing.T, child, want string) {
	t.Helper()
	_, err := Open(child, Options{ReadOnly: true})
	if !errors.Is(err, disklayer.ErrParentMismatch) || !strings.Contains(err.Error(), want) {
		t.Errorf("open over a changed base: %v; want ErrParentMismatch naming %q", err, want)
	}
	r, err := Check(child)
	if err != nil || r.OK() || !strings.Contains(r.String(), want) {
		t.Errorf("check over a changed base: %v, %v; want a problem naming %q", r, err, want)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestChangedHibdiskBaseCaught is finding 5 of the integrity issue: a
// hibdisk base written after a child was made over it (through hibdisk, or
// with an SQL client) was mixed into the child's view, and check was
// clean. A byte-identical copy or move of the base is still accepted.
func TestChangedHibdiskBaseCaught(t *testing.T) {
	for _, how := range []string{"hibdisk", "sql"} {
		t.Run(how, func(t *testing.T) {
			dir := testDir(t)
			base, child := filepath.Join(dir, "base.db"), filepath.Join(dir, "child.db")
			mustCreate(t, base, CreateOptions{Size: 1 << 20})
			b := mustOpen(t, base, Options{})
			mustWrite(t, b, fill(8192, 1), 0)
			mustClose(t, b)
			mustCreate(t, child, CreateOptions{Backing: base})

			// A copy and a move are the same base.
			elsewhere := filepath.Join(dir, "elsewhere")
			if err := os.Mkdir(elsewhere, 0o755); err != nil {
				t.Fatal(err)
			}
			copyFile(t, base, filepath.Join(elsewhere, "base.db"))
			copyFile(t, child, filepath.Join(elsewhere, "child.db"))
			mustClose(t, mustOpen(t, filepath.Join(elsewhere, "child.db"), Options{ReadOnly: true}))
			moved := filepath.Join(dir, "moved")
			if err := os.Rename(elsewhere, moved); err != nil {
				t.Fatal(err)
			}
			mustClose(t, mustOpen(t, filepath.Join(moved, "child.db"), Options{}))

			switch how {
			case "hibdisk":
				b := mustOpen(t, base, Options{})
				mustWrite(t, b, fill(4096, 2), 4096)
				mustClose(t, b)
			case "sql":
				conn, err := sqlite3.Open(base)
				if err != nil {
					t.Fatal(err)
				}
				if err := conn.Exec("UPDATE sectors SET data = randomblob(4096) WHERE sector = 1"); err != nil {
					t.Fatal(err)
				}
				if err := conn.Close(); err != nil {
					t.Fatal(err)
				}
			}
			refusesChangedBase(t, child, "generation")
			// rebase -u is how a user says the change is intended.
			if err := Rebase(child, base, "", true); err != nil {
				t.Fatal(err)
			}
			mustClose(t, mustOpen(t, child, Options{ReadOnly: true}))
		})
	}
}

// TestChangedRawBaseCaught: a raw base changed in place (64 KiB at
// 30 MiB, between the sampled digest's windows) was not caught. Now a
// changed file identity makes open verify the whole content. A copy, a
// move or a touch of an unchanged base is accepted (after one full read),
// and a writable open records the new identity.
func TestChangedRawBaseCaught(t *testing.T) {
	const size = 64 << 20
	const off = 30<<20 + 12345
	dir := testDir(t)
	base, child := filepath.Join(dir, "base.img"), filepath.Join(dir, "child.db")
	writeRaw(t, base, size, map[int64][]byte{0: fill(1<<20, 3), 40 << 20: fill(1<<20, 4)})
	mustCreate(t, child, CreateOptions{Backing: base, BackingFormat: disklayer.FormatRaw})
	recorded := layerParent(t, child)
	if recorded.SHA256 == "" || recorded.Stat == "" {
		t.Fatalf("child over a raw base records %+v; want its content digest and file identity", recorded)
	}

	// A touch: same content, new times. Accepted, and a writable open
	// records the new identity.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(base, later, later); err != nil {
		t.Fatal(err)
	}
	mustClose(t, mustOpen(t, child, Options{ReadOnly: true}))
	if layerParent(t, child).Stat != recorded.Stat {
		t.Error("a read-only open rewrote the child's record")
	}
	mustClose(t, mustOpen(t, child, Options{}))
	if now := layerParent(t, child); now.Stat == recorded.Stat || now.SHA256 != recorded.SHA256 {
		t.Errorf("after a verified open of a touched base the child records %+v; want a new identity, the same content", now)
	}

	// A copy in place of the original: accepted.
	copyFile(t, base, base+".copy")
	if err := os.Rename(base+".copy", base); err != nil {
		t.Fatal(err)
	}
	mustClose(t, mustOpen(t, child, Options{ReadOnly: true}))

	// 64 KiB changed in place, times put back: the change time still moves.
	st, err := os.Stat(base)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(base, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(fill(64<<10, 9), off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(base, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	refusesChangedBase(t, child, "content")
	if err := Rebase(child, base, disklayer.FormatRaw, true); err != nil {
		t.Fatal(err)
	}
	mustClose(t, mustOpen(t, child, Options{ReadOnly: true}))
}

// layerParent reads the parent reference the layer at path records.
func layerParent(t *testing.T, path string) disklayer.ParentRef {
	t.Helper()
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Info().Parent == nil {
		t.Fatalf("%s has no parent", path)
	}
	return *f.Info().Parent
}
