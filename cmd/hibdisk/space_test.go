package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// Space comes back: a layer gives the space of the rows it drops back to
// the filesystem, while a server holds it and when a command that drops
// rows exits; `hibdisk compact` converts a layer made before that.

func sizeOf(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// layerBytes is the size of a layer's database file and its WAL.
func layerBytes(t *testing.T, path string) int64 {
	return sizeOf(t, path) + sizeOf(t, path+"-wal")
}

// TestServeTrimGivesSpaceBack: 64 MiB written through the server and then
// discarded (TRIM) go back to the filesystem while the server still
// runs, and what was kept reads back intact.
func TestServeTrimGivesSpaceBack(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-io")
	dir := testDir(t)
	base := filepath.Join(dir, "base.img")
	content := bytes.Repeat([]byte("golden base "), (128<<20)/12+1)[:128<<20]
	if err := os.WriteFile(base, content, 0o644); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "create", "-b", "base.img", "-F", "raw", "job.db")
	job := filepath.Join(dir, "job.db")
	sock := filepath.Join(dir, "job.sock")
	stop := startServer(t, dir, "--socket", sock, "job.db")
	uri := "nbd+unix:///?socket=" + sock
	qemuIO(t, uri, "write -P 0x11 100M 1M", "write -P 0x5a 0 64M", "write -P 0x22 110M 1M", "flush")
	full := layerBytes(t, job)
	if full < 64<<20 {
		t.Fatalf("the layer holds %d bytes after 66 MiB were written", full)
	}
	qemuIO(t, uri, "discard 0 64M", "flush")
	// The reclaim runs in the background: wait for the files to shrink.
	// The deadline only keeps a broken build from hanging.
	deadline := time.Now().Add(2 * time.Minute)
	for layerBytes(t, job) > 8<<20 {
		if time.Now().After(deadline) {
			t.Log(mustHib(t, dir, "info", "job.db"))
			t.Fatalf("served layer still holds %d bytes (database %d, WAL %d) 2 minutes after 64 MiB of its 66 were discarded; it held %d",
				layerBytes(t, job), sizeOf(t, job), sizeOf(t, job+"-wal"), full)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("served layer: %d -> %d bytes", full, layerBytes(t, job))
	qemuIO(t, uri, "read -P 0x11 100M 1M", "read -P 0x22 110M 1M", "read -P 0 0 64M",
		"write -P 0x33 120M 1M", "read -P 0x33 120M 1M", "flush")
	if r := stop(); r.code != 0 {
		t.Fatalf("serve exit %d: %s", r.code, r.stderr)
	}
	d, err := diffdisk.Open(job, diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := append([]byte(nil), content...)
	copy(want, make([]byte, 64<<20))
	copy(want[100<<20:], bytes.Repeat([]byte{0x11}, 1<<20))
	copy(want[110<<20:], bytes.Repeat([]byte{0x22}, 1<<20))
	copy(want[120<<20:], bytes.Repeat([]byte{0x33}, 1<<20))
	got := make([]byte, len(want))
	if _, err := d.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("after the reclaim the chain differs from what was written at offset %d", i)
	}
}

// writeMiB writes n MiB of byte b at off through the chain at path.
func writeMiB(t *testing.T, path string, off int64, n int, b byte) {
	t.Helper()
	d, err := diffdisk.Open(path, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := d.WriteAt(bytes.Repeat([]byte{b}, 1<<20), off+int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestResizeShrinkGivesSpaceBack: `resize --shrink` drops the rows past
// the new end, and the file gives their space back before the command
// exits.
func TestResizeShrinkGivesSpaceBack(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "128M", "disk.db")
	path := filepath.Join(dir, "disk.db")
	writeMiB(t, path, 0, 1, 0x44)
	writeMiB(t, path, 32<<20, 64, 0x55)
	full := layerBytes(t, path)
	if full < 64<<20 {
		t.Fatalf("the layer holds %d bytes after 65 MiB were written", full)
	}
	mustHib(t, dir, "resize", "--shrink", "disk.db", "16M")
	after := layerBytes(t, path)
	t.Logf("resize --shrink: %d -> %d bytes", full, after)
	if after > 4<<20 {
		t.Errorf("the layer holds %d bytes after resize --shrink left 1 MiB of data, want < 4 MiB", after)
	}
	d, err := diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := make([]byte, 1<<20)
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x44}, 1<<20)) {
		t.Fatalf("the data kept by the shrink reads differently (err %v)", err)
	}
}

// TestCompactConvertsOldLayer: a layer made before live reclaim
// (auto_vacuum=NONE) keeps the space of rows it drops, says so in info,
// and `hibdisk compact` gives it back and converts it.
func TestCompactConvertsOldLayer(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "64M", "old.db")
	path := filepath.Join(dir, "old.db")
	// Make it what every layer was before: auto_vacuum=NONE.
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Exec("PRAGMA auto_vacuum=NONE; VACUUM"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	writeMiB(t, path, 0, 1, 0x66)
	writeMiB(t, path, 8<<20, 32, 0x77)
	d, err := diffdisk.Open(path, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Zero(8<<20, 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	full := layerBytes(t, path)
	if full < 32<<20 {
		t.Fatalf("an old layer holds %d bytes after 32 of its 33 MiB were dropped: it gave space back by itself", full)
	}
	if got := mustHib(t, dir, "info", "old.db"); !strings.Contains(got, "(kept until hibdisk compact, which also makes the layer give it back while in use)") {
		t.Errorf("info on an old layer:\n%s", got)
	}
	if got := mustHib(t, dir, "compact", "old.db"); !strings.Contains(got, "it now gives free space back while in use") {
		t.Errorf("compact of an old layer says %q", got)
	}
	if got := mustHib(t, dir, "info", "old.db"); !strings.Contains(got, "free space: 0 B (given back while in use)") {
		t.Errorf("info after compact:\n%s", got)
	}
	after := layerBytes(t, path)
	t.Logf("compact: %d -> %d bytes", full, after)
	if after > 4<<20 {
		t.Errorf("the layer holds %d bytes after compact, want < 4 MiB", after)
	}
	// Converted: the next drop gives its space back by itself.
	writeMiB(t, path, 8<<20, 32, 0x78)
	mustHib(t, dir, "resize", "--shrink", "old.db", "4M")
	if got := layerBytes(t, path); got > 4<<20 {
		t.Errorf("the converted layer holds %d bytes after a shrink left 1 MiB, want < 4 MiB", got)
	}
	if got := mustHib(t, dir, "compact", "old.db"); strings.Contains(got, "now gives") {
		t.Errorf("compact of a converted layer says %q", got)
	}
}
