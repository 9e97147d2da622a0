package nbd

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// Tests against real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy and
// nbdsh (python3-libnbd), all talking to an in-process server on a unix
// socket.

const peerDiskSize = 128 << 20

// peerPackages are the Debian packages of the peers these tests run.
const peerPackages = "qemu-utils libnbd-bin python3-libnbd nbdkit"

func nbdURI(sock, export string) string {
	return "nbd+unix:///" + export + "?socket=" + sock
}

// runTool runs a command and fails the test if it fails; it returns the
// combined output.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	// nbdsh needs the system python with its libnbd module.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func peerExports() []Export {
	return []Export{
		{Name: "disk", Description: "test disk", Backend: newMemBackend(peerDiskSize), PreferredBlockSize: 4096, MultiConn: true},
		{Name: "copy", Backend: newMemBackend(peerDiskSize), MultiConn: true},
		{Name: "ro", Backend: newMemBackend(1 << 20), ReadOnly: true},
	}
}

func TestQemuIO(t *testing.T) {
	testenv.RequireTools(t, peerPackages, "qemu-io")
	_, sock := startServer(t, peerExports()...)
	for _, cache := range []string{"", "none"} {
		args := []string{"-f", "raw"}
		if cache != "" {
			args = append(args, "-t", cache) // without FUA on every write
		}
		qemuIOBattery(t, append(args, nbdURI(sock, "disk")))
	}
}

// qemuIOBattery runs qemu-io's battery of writes and reads on the image
// that image (qemu-io's arguments naming it) opens, a peerExports disk.
func qemuIOBattery(t *testing.T, image []string) {
	t.Helper()
	last := fmt.Sprint(peerDiskSize - 512)
	var cmds []string
	add := func(c ...string) { cmds = append(cmds, c...) }
	// Many offsets and sizes, aligned and not.
	for i, size := range []string{"512", "4k", "64k", "1M", "1536", "7k", "100k"} {
		off := fmt.Sprint(8<<20 + i*(2<<20) + i*4608)
		pat := fmt.Sprintf("0x%02x", 0x40+i)
		add("write -P "+pat+" "+off+" "+size, "read -P "+pat+" "+off+" "+size)
	}
	add(
		"write -P 0x5a 0 64k", "read -P 0x5a 0 64k",
		// Unaligned write in the middle of the pattern.
		"write -P 0x33 1000 3000", "read -P 0x33 1000 3000",
		"read -P 0x5a 0 1000", "read -P 0x5a 4000 61536",
		// Zeroing with and without unmap, and discard.
		"write -P 0x66 1M 128k", "write -z 1M 64k", "read -P 0 1M 64k", "read -P 0x66 1088k 64k",
		"write -z -u 1088k 64k", "read -P 0 1M 128k",
		"write -P 0x67 2M 64k", "discard 2M 64k", "read -P 0 2M 64k",
		"write -P 0x68 3M 8k", "discard 3073k 3k", "read -P 0x68 3M 1k", "read -P 0 3073k 3k", "read -P 0x68 3076k 4k",
		// Vectored I/O.
		"writev -P 0x44 5M 4k 8k 512", "readv -P 0x44 5M 512 12k", "read -P 0x44 5M 12800",
		// Asynchronous writes and flush.
		"aio_write -P 0x11 6M 64k", "aio_write -P 0x12 6208k 64k", "aio_flush",
		"read -P 0x11 6M 64k", "read -P 0x12 6208k 64k", "flush",
		// The largest request, and the last sector.
		"write -P 0x77 64M 32M", "read -P 0x77 64M 32M",
		"write -P 0x99 "+last+" 512", "read -P 0x99 "+last+" 512",
	)
	var args []string
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := runTool(t, "qemu-io", append(args, image...)...)
	for _, bad := range []string{"Pattern verification failed", "error", "failed", "Error"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io %q reported %q:\n%s", image, bad, out)
		}
	}
	want := 0
	for _, c := range cmds {
		if !strings.HasSuffix(c, "flush") { // flushes print nothing
			want++
		}
	}
	if n := strings.Count(out, "wrote ") + strings.Count(out, "read ") + strings.Count(out, "discard "); n != want {
		t.Fatalf("qemu-io reported %d of %d commands:\n%s", n, want, out)
	}
}

func TestNbdinfo(t *testing.T) {
	testenv.RequireTools(t, peerPackages, "nbdinfo", "qemu-io")
	_, sock := startServer(t, peerExports()...)
	var info struct {
		Exports []map[string]any `json:"exports"`
	}
	out := runTool(t, "nbdinfo", "--json", nbdURI(sock, "disk"))
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	e := info.Exports[0]
	want := map[string]any{
		"export-size": float64(peerDiskSize), "can_flush": true, "can_fua": true, "can_trim": true,
		"can_zero": true, "can_fast_zero": true, "can_multi_conn": true, "can_cache": true, "can_df": true,
		"is_read_only": false, "block_size_minimum": float64(1), "block_size_preferred": float64(4096),
		"block_size_maximum": float64(32 << 20), "description": "test disk",
	}
	for k, v := range want {
		if e[k] != v {
			t.Errorf("nbdinfo --json %s = %v, want %v", k, e[k], v)
		}
	}
	out = runTool(t, "nbdinfo", "--json", nbdURI(sock, "ro"))
	if !strings.Contains(out, `"is_read_only": true`) || !strings.Contains(out, `"can_trim": false`) {
		t.Errorf("read-only export:\n%s", out)
	}

	out = runTool(t, "nbdinfo", "--list", nbdURI(sock, ""))
	for _, name := range []string{"disk", "copy", "ro", "test disk"} {
		if !strings.Contains(out, name) {
			t.Errorf("nbdinfo --list lacks %q:\n%s", name, out)
		}
	}

	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 1 0 1M", "-c", "discard 256k 256k", "-c", "write -z -u 768k 128k", nbdURI(sock, "disk"))
	out = runTool(t, "nbdinfo", "--map", "--totals", nbdURI(sock, "disk"))
	out += runTool(t, "nbdinfo", "--map", nbdURI(sock, "disk"))
	// data [0,256k), hole [256k,512k), data [512k,768k), hole [768k,896k),
	// data [896k,1M), then hole to the end.
	wantMap := []string{
		"0      262144    0  data",
		"262144      262144    3  hole,zero",
		"524288      262144    0  data",
		"786432      131072    3  hole,zero",
		"917504      131072    0  data",
		fmt.Sprintf("1048576   %d    3  hole,zero", peerDiskSize-1<<20),
	}
	for _, w := range wantMap {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(w), " ")) {
			t.Errorf("nbdinfo --map lacks %q:\n%s", w, out)
		}
	}
}

func TestNbdcopyAndQemuImg(t *testing.T) {
	testenv.RequireTools(t, peerPackages, "nbdcopy", "qemu-img", "qemu-io")
	_, sock := startServer(t, peerExports()...)
	dir := t.TempDir()
	disk, cp := nbdURI(sock, "disk"), nbdURI(sock, "copy")
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0x21 0 3M", "-c", "write -P 0x22 50M 1M", "-c", "write -P 0x23 1000 3000",
		"-c", fmt.Sprintf("write -P 0x24 %d 4k", peerDiskSize-4096), disk)

	raw := filepath.Join(dir, "out.raw")
	runTool(t, "nbdcopy", disk, raw)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", disk, raw)
	runTool(t, "nbdcopy", raw, cp)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", disk, cp)

	qcow := filepath.Join(dir, "out.qcow2")
	runTool(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", disk, qcow)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", disk, qcow)
	var info struct {
		ActualSize  int64 `json:"actual-size"`
		VirtualSize int64 `json:"virtual-size"`
	}
	out := runTool(t, "qemu-img", "info", "--output=json", qcow)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	// About 4 MiB of data in a 128 MiB disk: the holes stayed holes.
	if info.VirtualSize != peerDiskSize || info.ActualSize > 16<<20 {
		t.Fatalf("qcow2 virtual %d actual %d: sparseness lost", info.VirtualSize, info.ActualSize)
	}
	out = runTool(t, "qemu-img", "map", "--output=json", "-f", "raw", disk)
	if !strings.Contains(out, `"data": false`) || !strings.Contains(out, `"data": true`) {
		t.Fatalf("qemu-img map over NBD:\n%s", out)
	}
}

const nbdshScript = `
import errno, threading
import nbd
S = %q
SIZE = %d

def fresh(name, **kw):
    h = nbd.NBD()
    for k, v in kw.items():
        getattr(h, k)(v)
    h.set_export_name(name)
    h.connect_unix(S)
    return h

def errnum(f):
    try:
        f()
    except nbd.Error as e:
        return e.errnum
    return 0

# LIST and INFO in option mode.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(S)
names = []
h.opt_list(lambda n, d: names.append((n, d)))
assert [n for n, d in names] == ["disk", "copy", "ro"], names
assert ("disk", "test disk") in names, names
h.set_export_name("disk")
h.opt_info()
assert h.get_size() == SIZE, h.get_size()
assert h.can_fua() and h.can_flush() and h.can_trim() and h.can_zero() and h.can_multi_conn()
h.set_export_name("nope")
try:
    h.opt_info()
    raise AssertionError("opt_info on an unknown export succeeded")
except nbd.Error as e:
    print("unknown export:", e)
h.set_export_name("disk")
h.opt_go()
assert h.pread(512, 0) == bytes(512)
h.shutdown()

# ABORT.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(S)
h.opt_abort()
assert h.aio_is_closed() or h.aio_is_dead()

# EXPORT_NAME (oldstyle newstyle, no options).
h = fresh("disk", set_handshake_flags=0)
assert h.get_protocol() == "newstyle", h.get_protocol()
h.pwrite(b"E" * 4096, 4096)
assert h.pread(4096, 4096) == b"E" * 4096
h.shutdown()

# Simple replies only.
h = fresh("disk", set_request_structured_replies=False)
assert not h.get_structured_replies_negotiated()
h.pwrite(b"S" * 1000, 10000)
assert h.pread(1000, 10000) == b"S" * 1000
h.set_strict_mode(0)
assert errnum(lambda: h.pread(1024, SIZE - 512)) == errno.EINVAL
h.shutdown()

# Error codes as the server sends them.
h = fresh("disk", set_strict_mode=0)
assert h.get_structured_replies_negotiated()
assert errnum(lambda: h.pread(1024, SIZE - 512)) == errno.EINVAL
assert errnum(lambda: h.pwrite(b"x" * 1024, SIZE - 512)) == errno.ENOSPC
assert errnum(lambda: h.zero(1024, SIZE - 512)) == errno.ENOSPC
assert h.pread(0, 0) == b""
big = errnum(lambda: h.pread(64 << 20, 0))
assert big in (errno.EINVAL, errno.ERANGE), big  # ERANGE: refused by libnbd itself
assert errnum(lambda: h.pread(33 << 20, 0)) == errno.EINVAL
assert h.pread(512, 4096) == b"E" * 512, "connection unusable after errors"
h.shutdown()
h = fresh("ro", set_strict_mode=0)
assert h.is_read_only()
assert errnum(lambda: h.pwrite(b"x" * 512, 0)) == errno.EPERM
assert errnum(lambda: h.trim(512, 0)) == errno.EPERM
assert errnum(lambda: h.zero(512, 0)) == errno.EPERM
assert h.pread(512, 0) == bytes(512)
h.shutdown()

# Four connections write disjoint ranges in parallel, then flush; a fifth
# sees everything.
CHUNK = 1 << 20
def writer(i):
    w = fresh("disk")
    for j in range(8):
        w.pwrite(bytes([0x80 + i]) * CHUNK, (16 + i * 8 + j) * CHUNK)
    w.flush()
    w.shutdown()
ts = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
for t in ts: t.start()
for t in ts: t.join()
r = fresh("disk")
for i in range(4):
    for j in range(8):
        assert r.pread(CHUNK, (16 + i * 8 + j) * CHUNK) == bytes([0x80 + i]) * CHUNK, (i, j)
r.shutdown()
print("nbdsh ok")
`

func TestNbdsh(t *testing.T) {
	testenv.RequireTools(t, peerPackages, "nbdsh")
	_, sock := startServer(t, peerExports()...)
	out := runTool(t, "nbdsh", "-c", fmt.Sprintf(nbdshScript, sock, peerDiskSize))
	if !strings.Contains(out, "nbdsh ok") {
		t.Fatalf("nbdsh:\n%s", out)
	}
	t.Logf("nbdsh:\n%s", out)
}
