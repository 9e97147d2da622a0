package inspect

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/disklayer/memlayer"
	"github.com/hibdisk/hibdisk/inspect/jbd2/jbd2test"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// TestFilesystems builds each filesystem with its real tool from the same
// tree and checks that walking it gives back that tree: paths, sizes,
// contents, and modes, times and symlinks where the filesystem has them.
func TestFilesystems(t *testing.T) {
	for _, kind := range []Kind{KindExt4, KindFAT12, KindFAT16, KindFAT32, KindSquashfs, KindISO9660} {
		t.Run(string(kind), func(t *testing.T) {
			fat := kind == KindFAT12 || kind == KindFAT16 || kind == KindFAT32
			src := sourceTree(t, !fat)
			im := openImage(t, makeImage(t, kind, src))
			if im.TableType() != "" {
				t.Fatalf("TableType = %q, want none", im.TableType())
			}
			parts, err := im.Partitions()
			if err != nil {
				t.Fatal(err)
			}
			if len(parts) != 1 || parts[0].Index != 0 || parts[0].FS != kind {
				t.Fatalf("Partitions = %+v, want the whole disk holding %s", parts, kind)
			}
			if kind != KindSquashfs && !strings.EqualFold(parts[0].Label, "hibtest") {
				t.Errorf("label %q, want hibtest", parts[0].Label)
			}
			f, err := im.FS(0)
			if err != nil {
				t.Fatal(err)
			}
			if w := f.Warnings(); len(w) != 0 {
				t.Errorf("warnings on a clean filesystem: %q", w)
			}
			got := map[string]Entry{}
			err = f.Walk("/", func(e Entry) error {
				if e.Path != "/" && e.Path != "/lost+found" {
					got[e.Path] = e
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]fs.FileInfo{}
			err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
				if err != nil || p == src {
					return err
				}
				rel, _ := filepath.Rel(src, p)
				info, err := os.Lstat(p)
				want["/"+filepath.ToSlash(rel)] = info
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			var gotPaths, wantPaths []string
			for p := range got {
				gotPaths = append(gotPaths, p)
			}
			for p := range want {
				wantPaths = append(wantPaths, p)
			}
			if diff := cmp.Diff(sorted(wantPaths), sorted(gotPaths)); diff != "" {
				t.Fatalf("paths (-want +got):\n%s", diff)
			}
			for p, wi := range want {
				e := got[p]
				if e.Mode.Type() != wi.Mode().Type() {
					t.Errorf("%s: type %v, want %v", p, e.Mode.Type(), wi.Mode().Type())
				}
				if !fat && e.Mode.Perm() != wi.Mode().Perm() && kind != KindISO9660 {
					t.Errorf("%s: perm %v, want %v", p, e.Mode.Perm(), wi.Mode().Perm())
				}
				if wi.Mode().IsRegular() {
					if e.Size != wi.Size() {
						t.Errorf("%s: size %d, want %d", p, e.Size, wi.Size())
					}
					if !e.ModTime.Equal(fixedTime) {
						t.Errorf("%s: mtime %v, want %v", p, e.ModTime, fixedTime)
					}
					wantData, _ := os.ReadFile(filepath.Join(src, p))
					r, err := f.Open(p)
					if err != nil {
						t.Fatal(err)
					}
					data, err := io.ReadAll(r)
					r.Close()
					if err != nil || !bytes.Equal(data, wantData) {
						t.Errorf("%s: content %d bytes (err %v), want %d bytes", p, len(data), err, len(wantData))
					}
				}
				if wi.Mode().Type() == fs.ModeSymlink && e.Link != "hello.txt" {
					t.Errorf("%s: link %q, want hello.txt", p, e.Link)
				}
			}
		})
	}
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// TestPaths: every spelling of a path names the same file on every
// filesystem, and FAT matches names case-insensitively as Windows does.
func TestPaths(t *testing.T) {
	for _, kind := range []Kind{KindExt4, KindFAT32} {
		t.Run(string(kind), func(t *testing.T) {
			f, err := openImage(t, makeImage(t, kind, sourceTree(t, false))).FS(0)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"/dir/sub/deep.txt", "dir/sub/deep.txt", "/dir//sub/./deep.txt", "/dir/x/../sub/deep.txt"} {
				e, err := f.Stat(p)
				if err != nil || e.Path != "/dir/sub/deep.txt" {
					t.Errorf("Stat(%q) = %q, %v", p, e.Path, err)
				}
			}
			for _, p := range []string{"", "/", ".", "/dir/.."} {
				if e, err := f.Stat(p); err != nil || e.Path != "/" || !e.IsDir() {
					t.Errorf("Stat(%q) = %+v, %v; want the root", p, e, err)
				}
			}
			if _, err := f.Stat("/DIR/SUB/DEEP.TXT"); (err == nil) != (kind == KindFAT32) {
				t.Errorf("upper-case lookup on %s: %v", kind, err)
			}
		})
	}
}

func TestClean(t *testing.T) {
	for in, want := range map[string]string{"": ".", "/": ".", ".": ".", "a": "a", "/a/b/": "a/b", "a/./b": "a/b", "a/../b": "b"} {
		if got, err := Clean(in); err != nil || got != want {
			t.Errorf("Clean(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"..", "/../etc", "a/../../b"} {
		if _, err := Clean(in); !errors.Is(err, fs.ErrInvalid) {
			t.Errorf("Clean(%q) error %v, want fs.ErrInvalid", in, err)
		}
	}
}

// TestBadInput: each kind of bad input is its own error.
func TestBadInput(t *testing.T) {
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4")
	img := makeImage(t, KindExt4, sourceTree(t, true))
	f, err := openImage(t, img).FS(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat("/no/such/file"); !errors.Is(err, ErrNotExist) {
		t.Errorf("missing path: %v, want ErrNotExist", err)
	}
	if _, err := f.ReadDir("/hello.txt"); !errors.Is(err, ErrNotDir) {
		t.Errorf("ReadDir of a file: %v, want ErrNotDir", err)
	}
	if _, err := f.Open("/dir"); !errors.Is(err, ErrIsDir) {
		t.Errorf("Open of a directory: %v, want ErrIsDir", err)
	}
	if _, err := openImage(t, img).FS(3); !errors.Is(err, ErrNoPartition) {
		t.Errorf("partition 3 of an unpartitioned disk: %v, want ErrNoPartition", err)
	}

	zeros, err := memlayer.New(8<<20, 512, false)
	if err != nil {
		t.Fatal(err)
	}
	im, err := Open(zeros, "zeros")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.FS(0); !errors.Is(err, ErrNoFilesystem) {
		t.Errorf("blank disk: %v, want ErrNoFilesystem", err)
	}

	// Keep the magic number but make the group count absurd: the
	// filesystem is recognised and its superblock refused.
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	copy(data[1024+0x20:], []byte{0, 0, 0, 0}) // s_blocks_per_group = 0
	corrupt := filepath.Join(t.TempDir(), "corrupt.img")
	if err := os.WriteFile(corrupt, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := openImage(t, corrupt).FS(0); !errors.Is(err, ErrCorrupt) {
		t.Errorf("corrupt superblock: %v, want ErrCorrupt", err)
	}
}

// TestNeedsRecovery: needs_recovery with an empty journal (s_start 0)
// is what the kernel mounts without replaying anything: no warning. A
// journal that cannot be replayed (here its superblock is damaged) is
// opened as it is on disk, with one warning that says why.
func TestNeedsRecovery(t *testing.T) {
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4", "debugfs")
	img := makeImage(t, KindExt4, sourceTree(t, false))
	sh(t, "debugfs", "-w", "-R", "feature needs_recovery", img)
	f, err := openImage(t, img).FS(0)
	if err != nil {
		t.Fatal(err)
	}
	if w := f.Warnings(); len(w) != 0 {
		t.Fatalf("empty journal: Warnings = %q, want none", w)
	}

	img = liveImage(t, "-c", "-O", "metadata_csum,64bit")
	jbd2test.DamageSuperblock(t, img)
	f, err = openImage(t, img).FS(0)
	if err != nil {
		t.Fatal(err)
	}
	w := f.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "cannot be replayed (journal superblock checksum") {
		t.Fatalf("damaged journal: Warnings = %q, want one saying the checksum fails", w)
	}
	if _, err := f.Stat("/dir/sub/deep.txt"); err != nil {
		t.Errorf("unreplayed filesystem: %v", err)
	}
}

// TestStorageReadOnly: go-diskfs cannot get a writable file, and reads
// behave like io.ReaderAt at the end of the disk.
func TestStorageReadOnly(t *testing.T) {
	l, err := memlayer.New(1<<20, 512, false)
	if err != nil {
		t.Fatal(err)
	}
	s := NewStorage(l, "mem")
	if _, err = s.Writable(); !errors.Is(err, backend.ErrIncorrectOpenMode) {
		t.Fatalf("Writable: %v, want ErrIncorrectOpenMode", err)
	}
	if _, err := l.WriteAt([]byte("tail"), 1<<20-4); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8)
	n, err := s.ReadAt(p, 1<<20-4)
	if n != 4 || !errors.Is(err, io.EOF) || string(p[:4]) != "tail" {
		t.Fatalf("ReadAt at the end = %d, %v, %q", n, err, p[:n])
	}
	if end, err := s.Seek(0, io.SeekEnd); err != nil || end != 1<<20 {
		t.Fatalf("Seek end = %d, %v", end, err)
	}
	info, err := s.Stat()
	if err != nil || info.Size() != 1<<20 || !info.Mode().IsRegular() {
		t.Fatalf("Stat = %v, %v", info, err)
	}
	// A read that spans cache chunks sees the same bytes as the layer.
	big := bytes.Repeat([]byte{7}, 3*cacheChunk/2)
	if _, err := l.WriteAt(big, cacheChunk/2); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, cacheChunk)
	if _, err := s.ReadAt(got[:100], cacheChunk/2-50); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:50], make([]byte, 50)) || !bytes.Equal(got[50:100], big[:50]) {
		t.Fatalf("cached read across the written boundary is wrong")
	}
}
