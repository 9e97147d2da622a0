// Package jbd2test makes ext4 images whose journal needs recovery with
// the real tools (mkfs.ext4, debugfs's journal_open/journal_write), and
// replays them with e2fsprogs as the oracle, for the tests of package
// jbd2 and of inspect. No journal bytes are written by hand.
package jbd2test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// Require fails (in CI) or skips the test when e2fsprogs is missing.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireTools(t, "e2fsprogs", "mkfs.ext4", "debugfs", "e2fsck")
}

// Mkfs makes a size-byte ext4 image in a temporary directory with
// mkfs.ext4's args, filled from the directory src ("" for empty).
func Mkfs(t testing.TB, size int64, src string, args ...string) string {
	t.Helper()
	Require(t)
	img := filepath.Join(t.TempDir(), "fs.img")
	if src != "" {
		args = append(args, "-d", src)
	}
	args = append([]string{"-q", "-F", "-E", "nodiscard,lazy_itable_init=0"}, args...)
	args = append(args, img, fmt.Sprint(size/1024)+"k")
	cmd := exec.Command("mkfs.ext4", args...)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000", "MKE2FS_DEVICE_SECTSIZE=512")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return img
}

// BlockSize reads an ext4 image's block size from its superblock.
func BlockSize(t testing.TB, img string) int {
	t.Helper()
	sb := make([]byte, 1024)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(sb, 1024); err != nil {
		t.Fatal(err)
	}
	return 1024 << binary.LittleEndian.Uint32(sb[0x18:])
}

// Txn is one journal transaction for debugfs's journal_write.
type Txn struct {
	Blocks      []uint64 // filesystem blocks it logs
	Data        []byte   // their new content, one block each, in order
	Revoke      []uint64 // blocks it revokes
	Uncommitted bool     // no commit block (journal_write -c)
}

// WriteJournal opens img's journal with debugfs (journal_open with
// openArgs, e.g. "-c" for checksums, "-c -v 2" for checksum v2), writes
// the transactions and closes it, which leaves needs_recovery set.
func WriteJournal(t testing.TB, img, openArgs string, txns ...Txn) {
	t.Helper()
	dir := t.TempDir()
	var script strings.Builder
	fmt.Fprintf(&script, "jo %s\n", openArgs)
	for i, tx := range txns {
		line := "jw"
		if len(tx.Revoke) > 0 {
			line += " -r " + list(tx.Revoke)
		}
		if tx.Uncommitted {
			line += " -c"
		}
		if len(tx.Blocks) > 0 {
			data := filepath.Join(dir, fmt.Sprintf("txn%d", i))
			if err := os.WriteFile(data, tx.Data, 0o600); err != nil {
				t.Fatal(err)
			}
			line += " -b " + list(tx.Blocks) + " " + data
		}
		script.WriteString(line + "\n")
	}
	script.WriteString("jc\n")
	Debugfs(t, img, true, script.String())
}

func list(blocks []uint64) string {
	s := make([]string, len(blocks))
	for i, b := range blocks {
		s[i] = fmt.Sprint(b)
	}
	return strings.Join(s, ",")
}

// Debugfs runs a debugfs script on img (-w when write) and fails the
// test on any error message in its output.
func Debugfs(t testing.TB, img string, write bool, script string) string {
	t.Helper()
	args := []string{"-f", "-"}
	if write {
		args = append([]string{"-w"}, args...)
	}
	cmd := exec.Command("debugfs", append(args, img)...)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %s: %v: %s", img, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "while ") || strings.Contains(l, "Journal not open") || strings.Contains(l, "Unknown request") {
			t.Fatalf("debugfs %s: %s\nscript:\n%s", img, l, script)
		}
	}
	return string(out)
}

// Changes runs debugfs -w commands (one per line) on a copy of img and
// returns the transaction that turns img into that copy: every block
// that differs, with its new content. Journal it and replay must give
// the copy back.
func Changes(t testing.TB, img string, cmds ...string) Txn {
	t.Helper()
	bs := BlockSize(t, img)
	changed := filepath.Join(t.TempDir(), "changed.img")
	Copy(t, img, changed)
	Debugfs(t, changed, true, strings.Join(cmds, "\n")+"\n")
	// Compared a megabyte at a time in reused buffers: reading both
	// images whole for every transaction was most of the package's time
	// under the race detector (page faults in its shadow memory).
	fa, fb := open(t, img), open(t, changed)
	a, b := make([]byte, 1<<20), make([]byte, 1<<20) // whole blocks: bs divides it
	var tx Txn
	for base := 0; ; base += len(a) {
		na, errA := io.ReadFull(fa, a)
		nb, errB := io.ReadFull(fb, b)
		for off := 0; off+bs <= min(na, nb); off += bs {
			if !bytes.Equal(a[off:off+bs], b[off:off+bs]) {
				tx.Blocks = append(tx.Blocks, uint64((base+off)/bs))
				tx.Data = append(tx.Data, b[off:off+bs]...)
			}
		}
		if errA != nil || errB != nil {
			for _, err := range []error{errA, errB} {
				if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatal(err)
				}
			}
			break
		}
	}
	if len(tx.Blocks) == 0 {
		t.Fatalf("debugfs %q changed nothing", cmds)
	}
	return tx
}

// Replayed returns a copy of img recovered by e2fsprogs: how is
// "journal" (e2fsck -E journal_only: e2fsprogs's copy of the kernel's
// recovery.c and nothing else, so block for block the oracle) or "fsck"
// (e2fsck -fy, which replays and then checks and repairs).
func Replayed(t testing.TB, img, how string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), how+".img")
	Copy(t, img, out)
	var args []string
	switch how {
	case "journal":
		args = []string{"-E", "journal_only", "-y"}
	case "fsck":
		args = []string{"-fy"}
	default:
		t.Fatalf("Replayed: how %q", how)
	}
	cmd := exec.Command("e2fsck", append(args, out)...)
	msg, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); err != nil && code != 1 {
		t.Fatalf("e2fsck %s: exit %d: %s", strings.Join(args, " "), code, msg)
	}
	return out
}

// Cat is debugfs -R 'cat path' of img.
func Cat(t testing.TB, img, path string) []byte {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+path, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", path, err)
	}
	return out
}

// Copy copies file src to dst.
func Copy(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// open opens path for reading until the test ends.
func open(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// KernelSnapshot makes an ext4 image with mkfs's args, mounts it through
// a loop device, and appends to files with fsync (each fsync a journal
// transaction) until snapshot, given a copy of the image taken while
// it is mounted (what a hibernated machine's disk holds), returns true,
// or after maxRounds rounds of writes. It returns the accepted copy.
// The kernel makes the journal, so its wraparound and checkpointing are
// real. Mounting needs root: elsewhere the test is skipped; in CI a
// failing mount fails the test.
func KernelSnapshot(t testing.TB, size int64, maxRounds int, snapshot func(img string) bool, args ...string) string {
	t.Helper()
	Require(t)
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a loop device (CI runs as root)")
	}
	img := Mkfs(t, size, "", args...)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount -o loop: %v: %s", err, out)
		}
		t.Skipf("mount -o loop: %v: %s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	}()
	snap := filepath.Join(t.TempDir(), "snapshot.img")
	for round := range maxRounds {
		for i := range 20 {
			appendSync(t, filepath.Join(mnt, fmt.Sprintf("f%d", (round*20+i)%37)), fmt.Sprintf("round %d line %d\n", round, i))
		}
		Copy(t, img, snap)
		if snapshot(snap) {
			return snap
		}
	}
	t.Fatalf("no snapshot accepted after %d rounds", maxRounds)
	return ""
}

func appendSync(t testing.TB, path, line string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.Repeat(line, 40)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// DamageSuperblock flips a byte of the journal superblock's unused
// padding of the ext4 image img: only its checksum notices.
func DamageSuperblock(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command("debugfs", "-c", "-R", "bmap <8> 0", img).Output()
	if err != nil {
		t.Fatal(err)
	}
	blk, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	off := blk*int64(BlockSize(t, img)) + 0x60
	if _, err := f.WriteAt([]byte{0x5A}, off); err != nil {
		t.Fatal(err)
	}
}
