package jbd2_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/inspect/jbd2"
	"github.com/hibdisk/hibdisk/inspect/jbd2/jbd2test"
)

// srcTree is the content every test image starts from.
func srcTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, size := range map[string]int{"small": 100, "mid": 20000, "big": 300000} {
		data := bytes.Repeat([]byte(name+" "), size/len(name)+1)[:size]
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "d/e"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// hostFile writes content to a temporary file for debugfs's write.
func hostFile(t *testing.T, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, content, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// journalMagicFile is content whose first block starts with the jbd2
// magic number, so the journal must escape it.
func journalMagicFile(n int) []byte {
	b := bytes.Repeat([]byte("escaped!"), n/8+1)[:n]
	binary.BigEndian.PutUint32(b, 0xC03B3998)
	return b
}

type replayCase struct {
	name     string
	mkfs     []string
	openArgs string // journal_open options
	features string // what Info.Features must say
	txns     func(t *testing.T, img string) []jbd2test.Txn
}

// fileChanges is a typical series: files created, appended, removed,
// a directory made, each its own transaction.
func fileChanges(t *testing.T, img string) []jbd2test.Txn {
	t.Helper()
	work := filepath.Join(t.TempDir(), "work.img")
	jbd2test.Copy(t, img, work)
	steps := [][]string{
		{"write " + hostFile(t, "new", bytes.Repeat([]byte("new file "), 5000)) + " /new"},
		{"mkdir /d/e/f", "write " + hostFile(t, "esc", journalMagicFile(9000)) + " /d/e/f/escaped"},
		{"rm /mid", "write " + hostFile(t, "mid2", bytes.Repeat([]byte("second mid "), 3000)) + " /mid"},
		{"rm /small"},
	}
	var txns []jbd2test.Txn
	for _, cmds := range steps {
		tx := jbd2test.Changes(t, work, cmds...)
		jbd2test.Debugfs(t, work, true, strings.Join(cmds, "\n")+"\n")
		txns = append(txns, tx)
	}
	return txns
}

// committed counts the transactions before the first uncommitted one.
func committed(txns []jbd2test.Txn) uint32 {
	for i, tx := range txns {
		if tx.Uncommitted {
			return uint32(i)
		}
	}
	return uint32(len(txns))
}

// bmap is debugfs's bmap: the filesystem block of a file's block n.
func bmap(t *testing.T, img, path string, n int) uint64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "bmap "+path+" "+strconv.Itoa(n), img).Output()
	if err != nil {
		t.Fatalf("debugfs bmap: %v", err)
	}
	b, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || b == 0 {
		t.Fatalf("debugfs bmap %s %d: %q: %v", path, n, out, err)
	}
	return b
}

// revokes journals /big's blocks 0 and 1 with new content, revokes
// block 0 in a later transaction and journals it once more after that,
// and journals block 1 again with a revoke of it in the same
// transaction: replay must take block 0's last version and keep block
// 1 as on disk. A file change rides along first.
func revokes(t *testing.T, img string) []jbd2test.Txn {
	t.Helper()
	x, y := bmap(t, img, "/big", 0), bmap(t, img, "/big", 1)
	bs := jbd2test.BlockSize(t, img)
	fill := func(s string) []byte { return bytes.Repeat([]byte(s), bs/len(s)+1)[:bs] }
	return []jbd2test.Txn{
		fileChanges(t, img)[0],
		{Blocks: []uint64{x, y}, Data: append(fill("revoked later "), fill("also revoked ")...)},
		{Revoke: []uint64{x}},
		{Blocks: []uint64{x}, Data: fill("after the revoke ")},
		// Last: debugfs undercounts a transaction with blocks and
		// revokes, and the next one would overwrite its commit block.
		{Blocks: []uint64{y}, Data: fill("revoked in its own transaction "), Revoke: []uint64{y}},
	}
}

// uncommitted ends the journal with a transaction without a commit
// block, which replay must leave out.
func uncommitted(t *testing.T, img string) []jbd2test.Txn {
	t.Helper()
	txns := fileChanges(t, img)
	last := &txns[len(txns)-1]
	last.Uncommitted = true
	return txns
}

var replayCases = []replayCase{
	{"csum-v3-64bit", []string{"-O", "metadata_csum,64bit", "-J", "size=4"}, "-c", "journal_64bit journal_checksum_v3", fileChanges},
	{"csum-v2-64bit", []string{"-O", "metadata_csum,64bit", "-J", "size=4"}, "-c -v 2", "journal_64bit journal_checksum_v2", fileChanges},
	{"nocsum-32bit", []string{"-O", "^metadata_csum,^64bit", "-J", "size=4"}, "", "(none)", fileChanges},
	{"csum-v1-32bit", []string{"-O", "^metadata_csum,^64bit", "-J", "size=4"}, "-c", "journal_checksum", fileChanges},
	{"csum-v3-4k", []string{"-O", "metadata_csum,64bit", "-b", "4096"}, "-c", "journal_64bit journal_checksum_v3", fileChanges},
	{"revoke-csum-v3-64bit", []string{"-O", "metadata_csum,64bit", "-J", "size=4"}, "-c", "journal_incompat_revoke journal_64bit journal_checksum_v3", revokes},
	{"revoke-nocsum-32bit", []string{"-O", "^metadata_csum,^64bit", "-J", "size=4"}, "", "journal_incompat_revoke", revokes},
	{"revoke-csum-v2-32bit", []string{"-O", "metadata_csum,^64bit", "-J", "size=4"}, "-c -v 2", "journal_incompat_revoke journal_checksum_v2", revokes},
	{"uncommitted-csum-v3", []string{"-O", "metadata_csum,64bit", "-J", "size=4"}, "-c", "journal_64bit journal_checksum_v3", uncommitted},
	{"nocsum-ext3", []string{"-t", "ext3", "-J", "size=4"}, "", "(none)", fileChanges},
}

// TestReplayMatchesE2fsprogs: for each feature combination, the View
// equals, block for block, the image e2fsck -E journal_only (e2fsprogs's
// copy of the kernel's recovery.c) writes, except the superblocks.
func TestReplayMatchesE2fsprogs(t *testing.T) {
	for _, c := range replayCases {
		t.Run(c.name, func(t *testing.T) {
			img := jbd2test.Mkfs(t, 32<<20, srcTree(t), c.mkfs...)
			txns := c.txns(t, img)
			jbd2test.WriteJournal(t, img, c.openArgs, txns...)
			v := replay(t, img)
			if v.Info.Features != c.features {
				t.Errorf("features %q, want %q", v.Info.Features, c.features)
			}
			if got, want := v.Info.EndTransaction-v.Info.FirstTransaction, committed(txns); got != want {
				t.Errorf("replayed transactions [%d, %d), want %d", v.Info.FirstTransaction, v.Info.EndTransaction, want)
			}
			if strings.HasPrefix(c.name, "revoke") && v.Info.RevokeHits != 3 {
				t.Errorf("%d revoke hits, want 3 (block 0 once, block 1 twice)", v.Info.RevokeHits)
			}
			compareWithOracle(t, img, v)
		})
	}
}

func replay(t *testing.T, img string) *jbd2.View {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	v, err := jbd2.Replay(f, 0)
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if !v.Info.NeedsRecovery {
		t.Fatalf("Replay: needs_recovery not seen")
	}
	for _, w := range v.Info.Warnings {
		t.Logf("warning: %s", w)
	}
	return v
}

// compareWithOracle compares the whole View with e2fsck -E journal_only's image:
// only the journal superblock and the ext4 superblock's bookkeeping may
// differ.
func compareWithOracle(t *testing.T, img string, v *jbd2.View) {
	t.Helper()
	want, err := os.ReadFile(jbd2test.Replayed(t, img, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatalf("View.ReadAt: %v", err)
	}
	bs := int(v.BlockSize())
	jsb := journalSuperBlock(t, img)
	var bad []string
	for off := 0; off < len(want); off += bs {
		if off/bs == int(jsb) || bytes.Equal(got[off:off+bs], want[off:off+bs]) {
			continue
		}
		if off <= 1024 && 1024 < off+bs {
			compareSuper(t, got[1024:2048], want[1024:2048])
			if bytes.Equal(got[off:1024], want[off:1024]) && bytes.Equal(got[2048:off+bs], want[2048:off+bs]) {
				continue
			}
		}
		bad = append(bad, strconv.Itoa(off/bs))
	}
	if len(bad) > 0 {
		t.Errorf("blocks differ from e2fsck -E journal_only's: %s", strings.Join(bad, " "))
	}
}

// compareSuper: the replayed superblock equals e2fsprogs's but for the
// fields its writer updates on every write (kbytes written, checksum).
func compareSuper(t *testing.T, got, want []byte) {
	t.Helper()
	le := binary.LittleEndian
	if le.Uint32(got[0x60:])&4 != 0 {
		t.Errorf("replayed superblock still says needs_recovery")
	}
	// kbytes written, checksum, and the times e2fsprogs's writer sets.
	for _, r := range [][2]int{{0x2C, 0x34}, {0x40, 0x44}, {0x178, 0x180}, {0x274, 0x27C}, {0x3FC, 0x400}} {
		clear(got[r[0]:r[1]])
		clear(want[r[0]:r[1]])
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("superblock byte 0x%x: 0x%02x, e2fsprogs 0x%02x", i, got[i], want[i])
		}
	}
}

// journalSuperBlock is the filesystem block of the journal's block 0.
func journalSuperBlock(t *testing.T, img string) uint64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-c", "-R", "bmap <8> 0", img).Output()
	if err != nil {
		t.Fatalf("debugfs bmap: %v", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("debugfs bmap: %q: %v", out, err)
	}
	return n
}

// TestReplayKernelJournalWraps: a journal the kernel wrote on a mounted
// filesystem (a snapshot taken while mounted, once the live log has
// wrapped past the end of a 1024-block journal) replays block for block
// like e2fsck -E journal_only.
func TestReplayKernelJournalWraps(t *testing.T) {
	var v *jbd2.View
	img := jbd2test.KernelSnapshot(t, 16<<20, 200, func(img string) bool {
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		v, err = jbd2.Replay(f, 0)
		if err != nil {
			t.Fatalf("Replay: %v", err)
		}
		return v.Info.Wrapped
	}, "-b", "1024", "-J", "size=1", "-O", "metadata_csum,64bit")
	t.Logf("journal %s: transactions [%d, %d) from block %d, %d blocks replayed, %d overlaid",
		v.Info.Features, v.Info.FirstTransaction, v.Info.EndTransaction, v.Info.Start, v.Info.Replayed, v.Info.Blocks)
	compareWithOracle(t, img, replay(t, img))
}

// TestDamagedJournal: damage to a real journal ends in what the kernel
// does: a data block whose tag checksum fails is left out with one
// warning (the rest replays); a descriptor block whose checksum fails
// in the first transaction makes recovery fail: no View, ErrCorrupt.
func TestDamagedJournal(t *testing.T) {
	img := jbd2test.Mkfs(t, 32<<20, srcTree(t), "-O", "metadata_csum,64bit", "-J", "size=4")
	jbd2test.WriteJournal(t, img, "-c", fileChanges(t, img)...)
	for _, c := range []struct {
		name       string
		logBlock   int // journal block to damage: 1 is T1's descriptor, 2 its first data block
		wantErr    error
		wantWarned string
	}{
		{"data block", 2, nil, "invalid checksum recovering data block"},
		{"descriptor", 1, jbd2.ErrCorrupt, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			damaged := filepath.Join(t.TempDir(), "damaged.img")
			jbd2test.Copy(t, img, damaged)
			flipByte(t, damaged, journalBlock(t, img, c.logBlock)*uint64(jbd2test.BlockSize(t, img))+100)
			f, err := os.Open(damaged)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			v, err := jbd2.Replay(f, 0)
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("Replay: %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Replay: %v", err)
			}
			if len(v.Info.Warnings) != 1 || !strings.Contains(v.Info.Warnings[0], c.wantWarned) {
				t.Fatalf("warnings %q, want one saying %q", v.Info.Warnings, c.wantWarned)
			}
			compareWithOracle(t, damaged, v)
		})
	}
}

// journalBlock is the filesystem block of the journal's block n.
func journalBlock(t *testing.T, img string, n int) uint64 {
	t.Helper()
	out, err := exec.Command("debugfs", "-c", "-R", "bmap <8> "+strconv.Itoa(n), img).Output()
	if err != nil {
		t.Fatalf("debugfs bmap: %v", err)
	}
	b, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("debugfs bmap <8> %d: %q: %v", n, out, err)
	}
	return b
}

func flipByte(t *testing.T, path string, off uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, int64(off)); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xFF
	if _, err := f.WriteAt(b, int64(off)); err != nil {
		t.Fatal(err)
	}
}
