package inspect

import (
	"bytes"
	"encoding/binary"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/inspect/jbd2/jbd2test"
)

// liveImage makes an ext4 image whose newest changes are only in its
// journal, written by debugfs: new files (one whose first block starts
// with the jbd2 magic, so it is escaped), a directory, a rewritten and
// a removed file, each change its own transaction.
func liveImage(t *testing.T, openArgs string, mkfs ...string) string {
	t.Helper()
	img := jbd2test.Mkfs(t, 32<<20, sourceTree(t, true), mkfs...)
	work := filepath.Join(t.TempDir(), "work.img")
	jbd2test.Copy(t, img, work)
	magic := bytes.Repeat([]byte("escape "), 2000)
	binary.BigEndian.PutUint32(magic, 0xC03B3998)
	steps := [][]string{
		{"write " + hostFile(t, bytes.Repeat([]byte("appended line\n"), 3000)) + " /new.log"},
		{"mkdir /dir/made", "write " + hostFile(t, magic) + " /dir/made/magic.bin"},
		{"rm /hello.txt", "write " + hostFile(t, []byte("hello again\n")) + " /hello.txt"},
		{"rm /dir/sub/deep.txt"},
	}
	var txns []jbd2test.Txn
	for _, cmds := range steps {
		txns = append(txns, jbd2test.Changes(t, work, cmds...))
		jbd2test.Debugfs(t, work, true, strings.Join(cmds, "\n")+"\n")
	}
	jbd2test.WriteJournal(t, img, openArgs, txns...)
	return img
}

func hostFile(t *testing.T, content []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f"+strconv.Itoa(len(content)))
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestJournalReplayOracle: inspect on the unreplayed bytes shows exactly
// the files e2fsck -fy (which replays the journal) and debugfs rdump
// show on a copy, for each journal feature combination debugfs writes.
func TestJournalReplayOracle(t *testing.T) {
	for _, c := range []struct {
		name, open string
		mkfs       []string
	}{
		// go-diskfs reads only metadata_csum filesystems; journal
		// checksum v1 (which debugfs writes only without metadata_csum)
		// is covered block for block in package jbd2.
		{"csum-v3-64bit", "-c", []string{"-O", "metadata_csum,64bit"}},
		{"csum-v2-32bit", "-c -v 2", []string{"-O", "metadata_csum,^64bit"}},
		{"csum-v3-32bit-4k", "-c", []string{"-O", "metadata_csum,^64bit", "-b", "4096"}},
		{"nocsum-64bit-4k", "", []string{"-O", "metadata_csum,64bit", "-b", "4096"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := liveImage(t, c.open, c.mkfs...)
			want := rdump(t, jbd2test.Replayed(t, img, "fsck"))
			f, err := openImage(t, img).FS(0)
			if err != nil {
				t.Fatal(err)
			}
			if w := f.Warnings(); len(w) > 0 {
				t.Errorf("warnings after replay: %q", w)
			}
			got := tree(t, f)
			for p, content := range want {
				if g, ok := got[p]; !ok {
					t.Errorf("%s: missing", p)
				} else if g != content {
					t.Errorf("%s: %d bytes differ from e2fsck's %d", p, len(g), len(content))
				}
			}
			for p := range got {
				if _, ok := want[p]; !ok {
					t.Errorf("%s: not in e2fsck's filesystem", p)
				}
			}
		})
	}
}

// rdump returns every path of img (debugfs rdump of the root) with the
// content of regular files ("dir" for directories).
func rdump(t *testing.T, img string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("debugfs", "-R", "rdump / "+dir, img).CombinedOutput(); err != nil {
		t.Fatalf("debugfs rdump: %v: %s", err, out)
	}
	root := dir // rdump of / writes the root's entries into dir
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel := "/" + filepath.ToSlash(strings.TrimPrefix(p, root+"/"))
		if rel == "/lost+found" || strings.HasPrefix(rel, "/lost+found/") {
			return nil
		}
		switch {
		case d.IsDir():
			out[rel] = "dir"
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			out[rel] = string(b)
			return err
		default:
			out[rel] = "special"
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tree is rdump's map as inspect sees it.
func tree(t *testing.T, f *FS) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := f.Walk("/", func(e Entry) error {
		switch {
		case e.Path == "/":
		case e.Path == "/lost+found":
			return fs.SkipDir
		case e.IsDir():
			out[e.Path] = "dir"
		case e.Mode.IsRegular():
			r, err := f.Open(e.Path)
			if err != nil {
				return err
			}
			defer r.Close()
			b, err := io.ReadAll(r)
			out[e.Path] = string(b)
			return err
		default:
			out[e.Path] = "special"
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	return out
}

// TestJournalReplayKernelSnapshot: a copy of a mounted filesystem the
// kernel was appending to with fsync (its live journal wrapped around)
// shows, through inspect, the files e2fsck -fy and debugfs rdump show.
func TestJournalReplayKernelSnapshot(t *testing.T) {
	img := jbd2test.KernelSnapshot(t, 16<<20, 200, func(img string) bool {
		f, err := openImage(t, img).FS(0)
		if err != nil {
			t.Fatal(err)
		}
		v := f.view.journal
		return v != nil && v.Info.Wrapped
	}, "-b", "1024", "-J", "size=1", "-O", "metadata_csum,^64bit")
	f, err := openImage(t, img).FS(0)
	if err != nil {
		t.Fatal(err)
	}
	if w := f.Warnings(); len(w) > 0 {
		t.Errorf("warnings after replay: %q", w)
	}
	want, got := rdump(t, jbd2test.Replayed(t, img, "fsck")), tree(t, f)
	if len(want) < 10 {
		t.Fatalf("e2fsck's filesystem holds only %d files", len(want))
	}
	for p, content := range want {
		if got[p] != content {
			t.Errorf("%s: %d bytes, e2fsck's %d", p, len(got[p]), len(content))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: not in e2fsck's filesystem", p)
		}
	}
}

// TestDiffReplayed: a file rewritten with content of the same size,
// where the new inode and data are only in B's journal (the raw bytes
// outside the journal are A's), is reported changed: replayed blocks
// count as changed ranges, not only the raw ones.
func TestDiffReplayed(t *testing.T) {
	a := jbd2test.Mkfs(t, 32<<20, sourceTree(t, false), "-O", "metadata_csum,64bit")
	b := filepath.Join(t.TempDir(), "live.img")
	jbd2test.Copy(t, a, b)
	tx := jbd2test.Changes(t, b, "rm /hello.txt", "write "+hostFile(t, []byte("HELLO, WORLD\n"))+" /hello.txt")
	jbd2test.WriteJournal(t, b, "-c", tx)
	da, err := diffdisk.OpenImage(a)
	if err != nil {
		t.Fatal(err)
	}
	defer da.Close()
	db, err := diffdisk.OpenImage(b)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rep, err := Diff(da, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Filesystems) != 1 {
		t.Fatalf("filesystems %+v, skipped %q", rep.Filesystems, rep.Skipped)
	}
	fd := rep.Filesystems[0]
	var changed []string
	for _, c := range fd.Changed {
		if slices.Contains(c.Fields, "content") {
			changed = append(changed, c.Path)
		}
	}
	if !slices.Contains(changed, "/hello.txt") || len(fd.Added)+len(fd.Removed) != 0 || len(fd.Warnings) != 0 {
		t.Errorf("content changed in %q, added %v, removed %v, warnings %q; want /hello.txt changed", changed, fd.Added, fd.Removed, fd.Warnings)
	}
}
