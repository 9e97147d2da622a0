package hibfile_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if helperPath != "" {
		os.RemoveAll(filepath.Dir(helperPath))
	}
	os.Exit(code)
}

// buildHelper compiles testdata/helper.c once per test binary.
func buildHelper(t testing.TB) string {
	t.Helper()
	testenv.RequireTools(t, "gcc", "gcc")
	helperOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hibfile-helper")
		if err != nil {
			helperErr = err
			return
		}
		helperPath = filepath.Join(dir, "helper")
		out, err := exec.Command("gcc", "-O1", "-Wall", "-o", helperPath, "testdata/helper.c").CombinedOutput()
		if err != nil {
			helperErr = fmt.Errorf("gcc: %v\n%s", err, out)
		}
	})
	if helperErr != nil {
		t.Fatal(helperErr)
	}
	return helperPath
}

// helperProc is a running helper.
type helperProc struct {
	cmd        *exec.Cmd
	stdin      io.WriteCloser
	stdout     *bufio.Reader
	region     int64
	regionSize int64
	dataFile   string
}

func startHelper(t testing.TB, pages int) *helperProc {
	t.Helper()
	bin := buildHelper(t)
	data := filepath.Join(t.TempDir(), "data.txt")
	if err := os.WriteFile(data, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, strconv.Itoa(pages), data)
	// Without rseq: the kernel rewrites the rseq area's cpu id whenever a
	// thread resumes on another CPU, which would change a page between
	// captures that the test expects to be identical.
	cmd.Env = append(os.Environ(), "GLIBC_TUNABLES=glibc.pthread.rseq=0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helperProc{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout), dataFile: data}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := h.stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("helper did not start: %v", err)
	}
	if _, err := fmt.Sscanf(line, "%x %d", &h.region, &h.regionSize); err != nil {
		t.Fatalf("helper said %q: %v", line, err)
	}
	return h
}

func (h *helperProc) dirty(t testing.TB, pages, stride int) {
	t.Helper()
	fmt.Fprintf(h.stdin, "dirty %d %d\n", pages, stride)
	if line, err := h.stdout.ReadString('\n'); err != nil || line != "ok\n" {
		t.Fatalf("helper answered %q, %v", line, err)
	}
}

func (h *helperProc) pid() int { return h.cmd.Process.Pid }

func capture(t testing.TB, path string, pids ...int) hibfile.CaptureResult {
	t.Helper()
	res, err := hibfile.Capture(path, hibfile.CaptureOptions{PIDs: pids})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func findMapping(t *testing.T, p hibfile.Process, addr int64) hibfile.Mapping {
	t.Helper()
	for _, m := range p.Mappings {
		if m.VirtualAddr == addr {
			return m
		}
	}
	t.Fatalf("pid %d has no mapping at %#x", p.PID, addr)
	return hibfile.Mapping{}
}

func TestCaptureFilesSignalsMemory(t *testing.T) {
	h := startHelper(t, 16)
	layer := newBase(t, t.TempDir(), "cap.db")
	res := capture(t, layer, h.pid())
	if res.UnreadableBytes != 0 {
		t.Errorf("%d bytes unreadable", res.UnreadableBytes)
	}
	v := latestView(t, layer)
	snap := v.Snapshot()
	if snap.Source != "linux-proc" || snap.Status != hibfile.StatusComplete || snap.TotalProcesses != 1 || snap.KernelVersion == "" {
		t.Errorf("snapshot row = %+v", snap)
	}
	p, err := v.Process(int64(h.pid()))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "helper" || p.ParentPID != int64(os.Getpid()) || p.State != "sleeping" {
		t.Errorf("process = %s parent %d state %s, want helper, %d, sleeping", p.Name, p.ParentPID, p.State, os.Getpid())
	}
	wd, _ := os.Getwd()
	if p.CwdPath != wd {
		t.Errorf("cwd = %q, want %q", p.CwdPath, wd)
	}

	files := map[int64]hibfile.File{}
	for _, f := range p.Files {
		files[f.FD] = f
	}
	if f := files[3]; f.Path != h.dataFile || f.Position != 5 || !strings.HasPrefix(f.Flags, "O_RDWR|") || !strings.Contains(f.Flags, "O_APPEND") {
		t.Errorf("fd 3 = %+v, want %s at 5, O_RDWR|O_APPEND", f, h.dataFile)
	}
	if f := files[4]; f.Path != "/dev/null" || !strings.HasPrefix(f.Flags, "O_WRONLY|") || !strings.Contains(f.Flags, "O_CLOEXEC") {
		t.Errorf("fd 4 = %+v, want /dev/null O_WRONLY|O_CLOEXEC", f)
	}

	sigs := map[int64]hibfile.Signal{}
	for _, g := range p.Signals {
		sigs[g.Number] = g
	}
	if g := sigs[10]; g.Disposition != hibfile.DispositionHandler || g.HandlerAddress != nil {
		t.Errorf("SIGUSR1 = %+v, want a handler at an unknown address", g)
	}
	if g := sigs[12]; g.Disposition != hibfile.DispositionIgnore {
		t.Errorf("SIGUSR2 = %+v, want ignored", g)
	}
	if g := sigs[1]; g.Disposition != hibfile.DispositionDefault || g.Flags != "blocked" {
		t.Errorf("SIGHUP = %+v, want default and blocked", g)
	}
	if _, ok := sigs[15]; ok {
		t.Error("SIGTERM (default, not blocked) was recorded")
	}

	if runtime.GOARCH == "amd64" && (p.RegistersOffset == nil || p.RegistersSize != 27*8) {
		t.Errorf("registers offset %v size %d, want 216 bytes", p.RegistersOffset, p.RegistersSize)
	}

	region := findMapping(t, p, h.region)
	if region.Size != h.regionSize || region.Permissions != "rw-p" || region.BlobOffset == nil || !strings.Contains(region.Flags, "anonymous") {
		t.Fatalf("region mapping = %+v", region)
	}
	got := make([]byte, region.Size)
	if err := v.ReadBlob(got, *region.BlobOffset); err != nil {
		t.Fatal(err)
	}
	page := int(region.PageSize)
	for i := 0; i*page < len(got); i++ {
		if want := bytes.Repeat([]byte{byte(i%251 + 1)}, page); !bytes.Equal(got[i*page:(i+1)*page], want) {
			t.Fatalf("region page %d captured wrong", i)
		}
	}
	// Read-only mappings are recorded without content.
	for _, m := range p.Mappings {
		if m.Permissions[1] != 'w' && m.BlobOffset != nil {
			t.Errorf("read-only mapping %#x %s stored", m.VirtualAddr, m.Path)
		}
	}
}

// ownBlocksIn returns the blocks of the layer's own hibernate_blocks in
// [off, off+length).
func ownBlocks(t testing.TB, path string) []int64 {
	t.Helper()
	conn := openSQL(t, path)
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT block FROM hibernate_blocks ORDER BY block")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	var out []int64
	for stmt.Step() {
		out = append(out, stmt.ColumnInt64(0))
	}
	return out
}

func TestIncrementalCaptureStoresOnlyChangedPages(t *testing.T) {
	const pages, dirty, stride = 64, 10, 3
	h := startHelper(t, pages)
	dir := t.TempDir()
	base := newBase(t, dir, "base.db")
	capture(t, base, h.pid())

	// Nothing ran in between: the re-capture stores nothing.
	same := newDiff(t, dir, "same.db", base)
	res := capture(t, same, h.pid())
	if n := ownBlocks(t, same); len(n) != 0 || res.ChangedBlocks != 0 {
		t.Errorf("re-capture of an unchanged process stored blocks %v (%+v)", n, res.SaveResult)
	}

	h.dirty(t, dirty, stride)
	next := newDiff(t, dir, "next.db", same)
	res = capture(t, next, h.pid())

	v := latestView(t, next)
	p, err := v.Process(int64(h.pid()))
	if err != nil {
		t.Fatal(err)
	}
	region := findMapping(t, p, h.region)
	bs := res.BlockSize
	want := map[int64]bool{}
	for i := int64(0); i < dirty; i++ {
		want[(*region.BlobOffset+i*stride*region.PageSize)/bs] = true
	}
	inRegion, outside := 0, 0
	for _, b := range ownBlocks(t, next) {
		if b*bs >= *region.BlobOffset && b*bs < *region.BlobOffset+region.Size {
			inRegion++
			if !want[b] {
				t.Errorf("block %d of the region stored, but the helper did not change it", b)
			}
		} else {
			outside++
		}
	}
	if inRegion != dirty {
		t.Errorf("the diff layer holds %d blocks of the region, want exactly the %d pages the helper changed", inRegion, dirty)
	}
	// The helper's stack and libc state change when it handles a command:
	// those few pages are stored too, and nothing else.
	if outside > 8 {
		t.Errorf("the diff layer holds %d blocks outside the region, want only the few the command touched", outside)
	}
	t.Logf("incremental capture: %d region blocks + %d others of %d stored bytes", inRegion, outside, res.StoredBytes)

	// hib diff between the two captures reports exactly those pages in the
	// region, and no metadata change of the region.
	ca, err := hibfile.Open(same)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	va, err := ca.Latest()
	if err != nil {
		t.Fatal(err)
	}
	d, err := hibfile.Compare(va, v)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mc := range d.MappingsChanged {
		if mc.PID == int64(h.pid()) && mc.VirtualAddr == h.region {
			found = true
			if mc.PagesChanged != dirty || mc.BytesChanged != dirty*region.PageSize || len(mc.Changes) != 0 {
				t.Errorf("diff of the region = %+v, want %d pages (%d bytes) and no field changes", mc, dirty, dirty*region.PageSize)
			}
		}
	}
	if !found {
		t.Errorf("diff does not report the region: %+v", d.MappingsChanged)
	}
	if len(d.ProcessesAdded)+len(d.ProcessesRemoved)+len(d.MappingsAdded)+len(d.MappingsRemoved)+len(d.FilesChanged)+len(d.SignalsChanged) != 0 {
		t.Errorf("diff reports changes the test did not make: %+v", d)
	}
}
