package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/vfs"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// countingFile is a vfs.File over a plain os.File that counts its writes.
type countingFile struct {
	*os.File
	writes, reads int
}

func (f *countingFile) ReadAt(p []byte, off int64) (int, error) {
	f.reads++
	return f.File.ReadAt(p, off)
}

func (f *countingFile) WriteAt(p []byte, off int64) (int, error) {
	f.writes++
	return f.File.WriteAt(p, off)
}
func (f *countingFile) Sync(vfs.SyncFlag) error { return f.File.Sync() }
func (f *countingFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
func (f *countingFile) Lock(vfs.LockLevel) error                        { return nil }
func (f *countingFile) Unlock(vfs.LockLevel) error                      { return nil }
func (f *countingFile) CheckReservedLock() (bool, error)                { return false, nil }
func (f *countingFile) SectorSize() int                                 { return 512 }
func (f *countingFile) DeviceCharacteristics() vfs.DeviceCharacteristic { return 0 }

func TestWALFileCoalesces(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "x-wal"))
	if err != nil {
		t.Fatal(err)
	}
	inner := &countingFile{File: f}
	w := &walFile{gatheredFile: gatheredFile{osFile: osFile{inner}}}
	defer w.Close()

	// SQLite's pattern: a 24-byte frame header, then the page, repeated.
	var want bytes.Buffer
	for i := range 100 {
		hdr := bytes.Repeat([]byte{byte(i)}, 24)
		page := bytes.Repeat([]byte{byte(i) ^ 0xff}, 4096)
		for _, p := range [][]byte{hdr, page} {
			if _, err := w.WriteAt(p, int64(want.Len())); err != nil {
				t.Fatal(err)
			}
			want.Write(p)
		}
	}
	if inner.writes != 0 {
		t.Fatalf("%d writes reached the file before any flush, want them buffered", inner.writes)
	}
	// A read flushes first, so it sees every write.
	got := make([]byte, want.Len())
	if _, err := w.ReadAt(got, 0); err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("read after buffered writes: %v, equal %v", err, bytes.Equal(got, want.Bytes()))
	}
	if inner.writes != 1 {
		t.Fatalf("%d writes for 200 contiguous ones, want 1", inner.writes)
	}
	// A write elsewhere (SQLite rewriting the WAL header) flushes what
	// is pending and is itself buffered; Size and Sync see everything.
	if _, err := w.WriteAt([]byte("tail"), int64(want.Len())); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("HEAD"), 0); err != nil {
		t.Fatal(err)
	}
	if size, err := w.Size(); err != nil || size != int64(want.Len()+4) {
		t.Fatalf("size %d, %v; want %d", size, err, want.Len()+4)
	}
	if err := w.Sync(0); err != nil {
		t.Fatal(err)
	}
	disk, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(disk, []byte("HEAD")) || !bytes.HasSuffix(disk, []byte("tail")) {
		t.Fatal("the file lacks writes that were followed by Sync")
	}
}

// TestWALVFSAcrossConnections: with the coalescing VFS, a second
// connection sees every committed row and a reopened database holds them:
// SQLite publishes frames only after the sync that flushes them.
func TestWALVFSAcrossConnections(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	uri, err := FileURI(path, "rwc")
	if err != nil {
		t.Fatal(err)
	}
	w, err := sqlite3.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)"); err != nil {
		t.Fatal(err)
	}
	r, err := sqlite3.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	count := func() int64 {
		stmt, _, err := r.Prepare("SELECT count(*), coalesce(sum(length(v)), 0) FROM t")
		if err != nil {
			t.Fatal(err)
		}
		defer stmt.Close()
		if !stmt.Step() {
			t.Fatal(stmt.Err())
		}
		return stmt.ColumnInt64(0)
	}
	for round := range 5 {
		if err := w.Exec("BEGIN IMMEDIATE"); err != nil {
			t.Fatal(err)
		}
		ins, _, err := w.Prepare("INSERT INTO t (v) VALUES (?)")
		if err != nil {
			t.Fatal(err)
		}
		for range 500 {
			ins.BindBlob(1, bytes.Repeat([]byte{byte(round)}, 4096))
			if err := ins.Exec(); err != nil {
				t.Fatal(err)
			}
		}
		ins.Close()
		if err := w.Exec("COMMIT"); err != nil {
			t.Fatal(err)
		}
		if got, want := count(), int64(500*(round+1)); got != want {
			t.Fatalf("round %d: the other connection sees %d rows, want %d", round, got, want)
		}
		if round == 2 {
			if err := r.Exec("PRAGMA wal_checkpoint(PASSIVE)"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// fdFile is an countingFile that exposes its descriptor, as the OS VFS's files
// do, so that a fileMap can map it.
type fdFile struct{ countingFile }

func (f *fdFile) Truncate(size int64) error { return f.File.Truncate(size) }

// TestFileMapCoherentAndSafe: reads and writes through the mapping are
// what pread and pwrite on another descriptor see, and a file truncated
// behind the mapping's back falls back to system calls instead of
// crashing on SIGBUS or reading zeros that are not there.
func TestFileMapCoherentAndSafe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d := &dbFile{gatheredFile: gatheredFile{osFile: osFile{&fdFile{countingFile{File: f}}}, m: fileMap{limit: 1 << 30, writable: true}}}
	defer d.Close()
	other, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	page := func(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }
	// Extend through the file (the mapping cannot), then write inside it.
	if _, err := d.WriteAt(page(1), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(page(2), 4096); err != nil {
		t.Fatal(err)
	}
	inner := d.File.(*fdFile)
	// A database file's own writes (a checkpoint's) are pwrites even
	// inside the file (dbFile.WriteAt); the mapping's write path is a
	// scratch file's.
	before := inner.writes
	if _, err := d.WriteAt(page(5), 0); err != nil {
		t.Fatal(err)
	}
	if inner.writes != before+1 {
		t.Fatal("a checkpoint's write inside the file did not go to pwrite")
	}
	before = inner.writes
	if _, err := d.m.writeAt(d.File, page(3), 0); err != nil {
		t.Fatal(err)
	}
	if inner.writes != before {
		t.Fatal("a write inside the file did not go through the mapping")
	}
	got := make([]byte, 4096)
	if _, err := other.ReadAt(got, 0); err != nil || !bytes.Equal(got, page(3)) {
		t.Fatalf("another descriptor reads %d..., %v; want the mapped write", got[0], err)
	}
	// What another descriptor writes, the mapping reads.
	if _, err := other.WriteAt(page(4), 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, page(4)) {
		t.Fatalf("mapped read %d..., %v; want the other descriptor's write", got[0], err)
	}
	// Another descriptor truncates: the handle still believes the file is
	// two pages long. The read must report the missing page, not fault.
	if err := other.Truncate(4096); err != nil {
		t.Fatal(err)
	}
	if n, err := d.ReadAt(got, 4096); n != 0 || err == nil {
		t.Fatalf("read past the truncated end: %d bytes, %v; want a short read", n, err)
	}
	if err := other.Truncate(0); err != nil {
		t.Fatal(err)
	}
	// A write where the mapping now faults lands in the file anyway.
	d.m.known = 8192
	if _, err := d.WriteAt(page(5), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := other.ReadAt(got, 0); err != nil || !bytes.Equal(got, page(5)) {
		t.Fatalf("after a faulting write the file holds %d..., %v; want it written", got[0], err)
	}
}

// dirSyncingVFS is the OS VFS with a SyncDir that records its calls.
type dirSyncingVFS struct {
	vfs.VFS
	synced []string
}

func (v *dirSyncingVFS) OpenFilename(name *vfs.Filename, flags vfs.OpenFlag) (vfs.File, vfs.OpenFlag, error) {
	return v.VFS.(vfs.VFSFilename).OpenFilename(name, flags)
}

func (v *dirSyncingVFS) SyncDir(dir string) error {
	v.synced = append(v.synced, dir)
	return nil
}

// A WAL the connection creates is synced with its directory, once:
// ncruces' OS VFS fsyncs the WAL twice instead.
func TestWALSyncsItsDirectory(t *testing.T) {
	dir := t.TempDir()
	base := &dirSyncingVFS{VFS: vfs.Find("")}
	restore, err := UseBaseVFS(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	defer restore()
	uri, err := FileURI(filepath.Join(dir, "x.db"), "rwc")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := sqlite3.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, sql := range []string{"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "CREATE TABLE t (x)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"} {
		if err := conn.Exec(sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if len(base.synced) != 1 || base.synced[0] != dir {
		t.Errorf("directory syncs %q, want one of %q", base.synced, dir)
	}
}

// TestFullFilesystem: on a full filesystem a write into a hole of the
// file (space the filesystem never allocated) fails with SQLITE_FULL
// wrapping ENOSPC instead of killing the process with SIGBUS, whether it
// would have gone through the mapping or not; a size hint that cannot be
// allocated leaves the mapped part of the file where it was.
func TestFullFilesystem(t *testing.T) {
	dir := testenv.SmallFilesystem(t, "2m")
	f, err := os.OpenFile(filepath.Join(dir, "db"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d := &dbFile{gatheredFile: gatheredFile{osFile: osFile{&fdFile{countingFile{File: f}}}, m: fileMap{limit: 1 << 30, writable: true}}}
	defer d.Close()
	page := bytes.Repeat([]byte{7}, 4096)
	if _, err := d.WriteAt(page, 0); err != nil {
		t.Fatal(err)
	}
	// A hole: the file is 1 MiB long, one page of it allocated.
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	testenv.FillFilesystem(t, dir)
	if size, err := d.Size(); err != nil || size != 1<<20 {
		t.Fatalf("size %d, %v", size, err)
	}
	if d.m.mapped(d.File, true) == nil {
		t.Fatal("the file could not be mapped")
	}
	for _, off := range []int64{512 << 10, 2 << 20} { // in the hole, past the end
		_, err := d.WriteAt(page, off)
		if err == nil || !strings.Contains(err.Error(), syscall.ENOSPC.Error()) || vfsCode(err) != sqlite3.FULL {
			t.Errorf("write at %d on a full filesystem: %v (code %v); want SQLITE_FULL wrapping ENOSPC", off, err, vfsCode(err))
		}
	}
	known := d.m.known
	if err := d.SizeHint(4 << 20); err == nil || vfsCode(err) != sqlite3.FULL {
		t.Errorf("size hint on a full filesystem: %v, want SQLITE_FULL", err)
	}
	if d.m.known != known {
		t.Errorf("a failed size hint moved the mapped part from %d to %d", known, d.m.known)
	}
	// What was written before is intact.
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, page) {
		t.Fatalf("read of the allocated page: %v", err)
	}
}

// vfsCode is the SQLite result code an error made by vfs.SystemError
// carries (its type is unexported), or 0.
func vfsCode(err error) sqlite3.ErrorCode {
	var code sqlite3.ErrorCode
	v := reflect.ValueOf(err)
	if v.Kind() == reflect.Struct && v.NumField() == 2 && v.Field(1).CanUint() {
		code = sqlite3.ErrorCode(v.Field(1).Uint())
	}
	return code
}

// TestFileMapWindow: reading a file much larger than the mapping's window
// through it leaves at most a window's worth of pages mapped (the
// process's resident file pages stay bounded), and every read still
// returns the file's bytes.
func TestFileMapWindow(t *testing.T) {
	defer func(w int64) { mapWindowBytes = w }(mapWindowBytes)
	// Not a whole number of windows, so that the last read does not
	// happen to empty the mapping; a window of several 2 MiB (what one
	// fault may map where the file is in large folios).
	const window, size = 4 << 20, 22 << 20
	mapWindowBytes = window
	path := filepath.Join(t.TempDir(), "db")
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i / 4096)
	}
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := &dbFile{gatheredFile: gatheredFile{osFile: osFile{&fdFile{countingFile{File: f}}}, m: fileMap{limit: 1 << 30, writable: true}}}
	defer d.Close()
	if _, err := d.Size(); err != nil { // the mapping serves what the file is known to hold
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	for off := int64(0); off < size; off += 4096 {
		for range 3 { // a chunk's first reads are preads; the third maps it
			if _, err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, want[off:off+4096]) {
				t.Fatalf("read at %d: %v, or wrong bytes", off, err)
			}
		}
	}
	if d.m.data == nil {
		t.Fatal("the reads did not go through a mapping")
	}
	rss := mappingRSS(t, uintptr(unsafe.Pointer(&d.m.data[0])))
	if rss == 0 {
		t.Error("nothing is mapped after reading the file twice over: the mapping is not used")
	}
	if rss > window {
		t.Errorf("the mapping holds %d bytes resident after reading %d, want at most the %d-byte window", rss, size, window)
	}
}

// mappingRSS is the resident size of the mapping that starts at addr,
// from /proc/self/smaps.
func mappingRSS(t *testing.T, addr uintptr) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	start := fmt.Sprintf("%x-", addr)
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "-") && len(strings.Fields(line)) >= 5 && !strings.HasSuffix(strings.Fields(line)[0], ":") {
			in = strings.HasPrefix(line, start)
			continue
		}
		if in && strings.HasPrefix(line, "Rss:") {
			var kb int64
			fmt.Sscanf(strings.TrimPrefix(line, "Rss:"), "%d", &kb)
			return kb << 10
		}
	}
	t.Fatalf("no mapping at %#x in smaps", addr)
	return 0
}

// TestFileMapReadsReadOnly: reads go through a read-only mapping and
// writes through a writable one (fileMap: a read fault in a writable
// shared mapping of a tmpfs file maps one page, in a read-only one the
// pages around it too), except a chunk's first read, which is a pread
// (readMapped); a write is seen by the next read.
func TestFileMapReadsReadOnly(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	d := &dbFile{gatheredFile: gatheredFile{osFile: osFile{&fdFile{countingFile{File: f}}}, m: fileMap{limit: 1 << 30, writable: true}}}
	defer d.Close()
	page := bytes.Repeat([]byte{7}, 4096)
	for off := int64(0); off < 64<<10; off += 4096 { // pwrite: the file grows
		if _, err := d.WriteAt(page, off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.m.writeAt(d.File, bytes.Repeat([]byte{9}, 4096), 8192); err != nil { // inside: through the mapping
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 8192); err != nil || got[0] != 9 {
		t.Fatalf("read back %d, %v; want the 9s just written", got[0], err)
	}
	if _, err := d.ReadAt(got, 16384); err != nil || got[0] != 7 {
		t.Fatalf("read back %d, %v; want 7s", got[0], err)
	}
	if d.m.data != nil {
		t.Error("the first reads of a chunk went through a mapping, want pread")
	}
	if _, err := d.ReadAt(got, 12288); err != nil || got[0] != 7 { // the chunk's third read: mapped
		t.Fatalf("read back %d, %v; want 7s", got[0], err)
	}
	if d.m.data == nil || d.m.wdata == nil {
		t.Fatal("the third read and the write did not each use a mapping")
	}
	if _, err := d.m.writeAt(d.File, bytes.Repeat([]byte{5}, 4096), 12288); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(got, 12288); err != nil || got[0] != 5 {
		t.Fatalf("read back %d, %v through the read mapping; want the 5s just written through the other", got[0], err)
	}
	if perms := mappingPerms(t, uintptr(unsafe.Pointer(&d.m.data[0]))); perms[:2] != "r-" {
		t.Errorf("reads go through a mapping with permissions %s, want read-only", perms)
	}
	if perms := mappingPerms(t, uintptr(unsafe.Pointer(&d.m.wdata[0]))); perms[:2] != "rw" {
		t.Errorf("writes go through a mapping with permissions %s, want writable", perms)
	}
}

// mappingPerms is the permissions field (rwxs/rwxp) of the mapping that
// starts at addr, from /proc/self/maps.
func mappingPerms(t *testing.T, addr uintptr) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Skipf("no maps: %v", err)
	}
	start := fmt.Sprintf("%x-", addr)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && strings.HasPrefix(f[0], start) {
			return f[1]
		}
	}
	t.Fatalf("no mapping at %#x in maps", addr)
	return ""
}

// TestScratchWriteBehind: a scratch database file's full buffers are
// written by a goroutine while the next fills (gatheredFile.async); what
// is read back, even a page still in flight or rewritten after it, is
// what was written last, and a write that fails for lack of space is
// reported (SQLITE_FULL) by a later operation rather than lost.
func TestScratchWriteBehind(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	d := &dbFile{gatheredFile: gatheredFile{osFile: osFile{&fdFile{countingFile{File: f}}}, m: fileMap{limit: 1 << 30, writable: true}, async: true}, scratch: true}
	const pages = 3*gatherBytes/4096 + 5
	page := func(i int, v byte) []byte { return bytes.Repeat([]byte{byte(i), v}, 2048) }
	for i := range pages {
		if _, err := d.WriteAt(page(i, 1), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
		if i == gatherBytes/4096+3 { // the first buffer is in flight: read and rewrite a page of it
			got := make([]byte, 4096)
			if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, page(1, 1)) {
				t.Fatalf("read of a page written behind: %v, or wrong bytes", err)
			}
			if _, err := d.WriteAt(page(1, 2), 4096); err != nil {
				t.Fatal(err)
			}
		}
	}
	if d.inflight == nil && d.spare == nil {
		t.Error("no buffer was written behind")
	}
	if err := d.Sync(0); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != pages*4096 {
		t.Fatalf("file holds %d bytes, want %d", len(b), pages*4096)
	}
	for i := range pages {
		want := page(i, 1)
		if i == 1 {
			want = page(1, 2)
		}
		if !bytes.Equal(b[i*4096:(i+1)*4096], want) {
			t.Fatalf("page %d holds other bytes than written last", i)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// A full filesystem: the write behind fails, and a later operation says so.
	dir := testenv.SmallFilesystem(t, "2m")
	f, err = os.OpenFile(filepath.Join(dir, "db"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	d = &dbFile{gatheredFile: gatheredFile{osFile: osFile{&fdFile{countingFile{File: f}}}, m: fileMap{limit: 1 << 30, writable: true}, async: true}, scratch: true}
	defer d.Close()
	testenv.FillFilesystem(t, dir)
	var failed error
	for i := 0; i < 3*gatherBytes/4096 && failed == nil; i++ {
		_, failed = d.WriteAt(page(i, 1), int64(i)*4096)
	}
	if failed == nil {
		failed = d.Sync(0)
	}
	if failed == nil || vfsCode(failed) != sqlite3.FULL {
		t.Errorf("writing 3 MiB on a full filesystem: %v (code %v), want SQLITE_FULL", failed, vfsCode(failed))
	}
}

// TestStreamReads: reads moving forward through a file nobody writes
// (Options.Stable) are served from a stream's buffer, one pread per
// streamBufBytes, in the order SQLite reads a converted layer (a leaf,
// then the overflow pages before it), two streams interleaved, and
// return the file's bytes; a file that may change is read as before, and
// reads see its changes.
func TestStreamReads(t *testing.T) {
	const size = 16 << 20
	path := filepath.Join(t.TempDir(), "db")
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i/4096) ^ byte(i)
	}
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	open := func(stable bool) (*dbFile, *fdFile) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		cf := &fdFile{countingFile{File: f}}
		d := &dbFile{gatheredFile: gatheredFile{osFile: osFile{cf}, m: fileMap{limit: 1 << 30, stable: stable}}}
		t.Cleanup(func() { d.Close() })
		if _, err := d.Size(); err != nil {
			t.Fatal(err)
		}
		return d, cf
	}
	// Rows of 9 pages, leaf last; each stream one half of the file.
	read := func(d *dbFile) {
		got := make([]byte, 4096)
		half := int64(size / 2 / (9 * 4096))
		for g := range half {
			for _, base := range []int64{0, size / 2} {
				row := base + g*9*4096
				for _, r := range append([][2]int64{{row + 8*4096, 4096}}, func() (o [][2]int64) {
					for i := range int64(8) {
						o = append(o, [2]int64{row + i*4096 + 4, 3611})
					}
					return o
				}()...) {
					p := got[:r[1]]
					if _, err := d.ReadAt(p, r[0]); err != nil || !bytes.Equal(p, want[r[0]:r[0]+r[1]]) {
						t.Fatalf("read of %d at %d: %v, or wrong bytes", r[1], r[0], err)
					}
				}
			}
		}
	}
	d, cf := open(true)
	read(d)
	// 16 MiB in 256 KiB preads is 64, plus the reads before a stream is
	// seen and the refills a little behind.
	if cf.reads == 0 || cf.reads > 400 {
		t.Errorf("%d preads for a 16 MiB file read in order by two streams, want a few hundred at most", cf.reads)
	}
	t.Logf("stable: %d preads", cf.reads)

	d, cf = open(false)
	read(d)
	t.Logf("not stable: %d preads", cf.reads)
	if d.m.streams[0].buf != nil || d.m.streams[1].buf != nil {
		t.Error("a file that may change was buffered")
	}
	// And it sees changes made under it.
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	changed := bytes.Repeat([]byte{0xee}, 4096)
	if _, err := w.WriteAt(changed, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, changed) {
		t.Fatalf("read after a change: %v, or the old bytes", err)
	}
}
