package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/internal/testenv"
)

// foreignSize is about 1 GiB (2080 cylinders x 16 heads x 63 sectors of
// 512 bytes, 256 KiB short of 1 GiB): a size vpc's CHS geometry keeps
// exactly (vpc rounds other sizes up unless -o force_size=on) and a
// multiple of 4096.
const foreignSize = 2080 * 16 * 63 * 512

// foreignSource makes a chain whose view holds about 4 MiB of data in
// foreignSize: a raw image written by qemu-io, converted to a hibdisk
// base, and a diff layer over it with writes of its own and zeros over
// part of the base's data. It returns the top layer and the view as a
// raw image (hibdisk's own convert -O raw), which the outputs must equal.
func foreignSource(t *testing.T, dir string) (top, want string) {
	t.Helper()
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-io")
	raw := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(raw, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(raw, foreignSize); err != nil {
		t.Fatal(err)
	}
	runTool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 1M", "-c", "write -P 0xcd 300M 1M", "-c", "write -P 0xef 1000M 1M", raw)
	mustHib(t, dir, "convert", "base.raw", "base.db")
	mustHib(t, dir, "create", "-b", "base.db", "top.db")
	d, err := diffdisk.Open(filepath.Join(dir, "top.db"), diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte{0x5a}, 1<<20), 500<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt(bytes.Repeat([]byte{0xa5}, 1000), 700<<20+512); err != nil {
		t.Fatal(err)
	}
	if err := d.Zero(1<<20+256<<10, 256<<10); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "convert", "-O", "raw", "top.db", "want.raw")
	return "top.db", filepath.Join(dir, "want.raw")
}

// runTool runs a QEMU tool that must succeed and returns its stdout.
func runTool(t *testing.T, tool string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(tool, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", tool, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// imageInfo is what the tests read of `qemu-img info --output=json`.
type imageInfo struct {
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	ClusterSize int64  `json:"cluster-size"`
	Specific    struct {
		Data struct {
			CreateType string `json:"create-type"`
			Compat     string `json:"compat"`
		} `json:"data"`
	} `json:"format-specific"`
}

func qemuInfo(t *testing.T, path string) imageInfo {
	t.Helper()
	var info imageInfo
	if err := json.Unmarshal([]byte(runTool(t, "qemu-img", "info", "--output=json", path)), &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// mappedData is how many bytes `qemu-img map` says hold data.
func mappedData(t *testing.T, path string) int64 {
	t.Helper()
	var extents []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(runTool(t, "qemu-img", "map", "--output=json", path)), &extents); err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range extents {
		if e.Data {
			n += e.Length
		}
	}
	return n
}

// noPartial fails the test when a convert left a temporary file in dir.
func noPartial(t *testing.T, dir string) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(dir, ".*.partial-*")); len(m) > 0 {
		t.Errorf("temporary files left: %v", m)
	}
}

// TestConvertForeignFormats: convert -O qcow2|vmdk|vhdx|vdi|vpc writes,
// through qemu-img, an image qemu-img reads as that format with the
// chain's exact view, keeping it sparse (qemu-img learns the holes from
// NBD block status: about 4 MiB of data in 1 GiB gives an image of a
// few MiB). Options go through to qemu-img: -o subformat=streamOptimized,
// -c, -o compat=0.10.
func TestConvertForeignFormats(t *testing.T) {
	dir := testDir(t)
	top, want := foreignSource(t, dir)
	cases := []struct {
		out    string
		args   []string
		format string
	}{
		{"out.qcow2", []string{"-O", "qcow2"}, "qcow2"},
		{"out.vmdk", []string{"-O", "vmdk"}, "vmdk"},
		{"out.vhdx", []string{"-O", "vhdx"}, "vhdx"},
		{"out.vdi", []string{"-O", "vdi"}, "vdi"},
		{"out.vhd", []string{"-O", "vpc"}, "vpc"},
		{"stream.vmdk", []string{"-O", "vmdk", "-o", "subformat=streamOptimized"}, "vmdk"},
		{"compressed.qcow2", []string{"-c", "-O", "qcow2"}, "qcow2"},
		{"v2.qcow2", []string{"-O", "qcow2", "-o", "compat=0.10", "-o", "cluster_size=128k"}, "qcow2"},
	}
	for _, c := range cases {
		mustHib(t, dir, append(append([]string{"convert"}, c.args...), top, c.out)...)
		out := filepath.Join(dir, c.out)
		info := qemuInfo(t, out)
		if info.Format != c.format || info.VirtualSize != foreignSize {
			t.Errorf("%s: qemu-img info says format %s, size %d; want %s, %d", c.out, info.Format, info.VirtualSize, c.format, foreignSize)
		}
		if r := qemuCompare(out, c.format, want); r != "Images are identical.\n" {
			t.Errorf("%s: qemu-img compare with the view: %s", c.out, r)
		}
		if info.ActualSize > 16<<20 {
			t.Errorf("%s: %d bytes on disk for about 4 MiB of data: holes were copied", c.out, info.ActualSize)
		}
		t.Logf("%s: %.2f MiB on disk", c.out, float64(info.ActualSize)/(1<<20))
	}
	if n := mappedData(t, filepath.Join(dir, "out.qcow2")); n < 3<<20 || n > 5<<20 {
		t.Errorf("qemu-img map of out.qcow2: %d bytes of data, want the source's 4 MiB (in 64 KiB clusters)", n)
	}
	if ct := qemuInfo(t, filepath.Join(dir, "stream.vmdk")).Specific.Data.CreateType; ct != "streamOptimized" {
		t.Errorf("stream.vmdk: create type %q", ct)
	}
	if v2 := qemuInfo(t, filepath.Join(dir, "v2.qcow2")); v2.Specific.Data.Compat != "0.10" || v2.ClusterSize != 128<<10 {
		t.Errorf("-o compat=0.10 -o cluster_size=128k: compat %q, cluster size %d", v2.Specific.Data.Compat, v2.ClusterSize)
	}
	if c, u := fileBytes(t, dir, "compressed.qcow2"), fileBytes(t, dir, "out.qcow2"); c >= u/2 {
		t.Errorf("-c: compressed.qcow2 is %d bytes, out.qcow2 %d: not compressed", c, u)
	}
	noPartial(t, dir)
}

func qemuCompare(out, format, raw string) string {
	b, err := exec.Command("qemu-img", "compare", "-f", format, "-F", "raw", out, raw).CombinedOutput()
	if err != nil {
		return err.Error() + ": " + string(b)
	}
	return string(b)
}

func fileBytes(t *testing.T, dir, name string) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestConvertForeignErrors: qemu-img's failure is one line (its first),
// naming the output rather than the temporary file, exit 1, and nothing
// is left: no DST, no partial file. -o and -c for hibdisk or raw output
// are refused as bad usage; options convert cannot keep atomic too.
func TestConvertForeignErrors(t *testing.T) {
	dir := testDir(t)
	top, _ := foreignSource(t, dir)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-O", "qcow2", "-o", "compat=9"}, 1, `qemu-img: out: error while converting qcow2: Parameter 'version' does not accept value '9'`},
		{[]string{"-O", "qcow2", "-o", "bogus=1"}, 1, `qemu-img: Invalid parameter 'bogus'`},
		{[]string{"-O", "vdi", "-c"}, 1, `qemu-img: Compression not supported for this file format`},
		{[]string{"-O", "vmdk", "-o", "subformat=monolithicFlat"}, 1, `writes a separate extent file`},
		{[]string{"-O", "qcow2", "-o", "help"}, 1, `qemu-img create -f qcow2 -o help`},
		{[]string{"-O", "raw", "-o", "compat=1.1"}, 2, `-o and -c are qemu-img's options, for -O qcow2|vmdk|vhdx|vdi|vpc; not for -O raw`},
		{[]string{"-c"}, 2, `not for -O hibdisk`},
		{[]string{"-O", "qed"}, 2, `-O "qed": want hibdisk, raw, openvmm, qcow2|vmdk|vhdx|vdi|vpc`},
		{[]string{"-t", "directio"}, 2, `-t "directio": want writeback, none, unsafe, writethrough or directsync`},
	}
	for _, c := range cases {
		r := hib(t, dir, append(append([]string{"convert"}, c.args...), top, "out")...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("convert %v: exit %d, stderr %q; want exit %d and one line with %q", c.args, r.code, r.stderr, c.code, c.want)
		}
		if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
			t.Fatalf("convert %v failed and left out", c.args)
		}
		noPartial(t, dir)
	}
}

// TestConvertForeignProgress: -p shows qemu-img's progress with
// hibdisk's bar on a terminal, and it reaches 100%; piped, nothing.
func TestConvertForeignProgress(t *testing.T) {
	dir := testDir(t)
	top, _ := foreignSource(t, dir)
	r := hibTerm(t, dir, "convert", "-p", "-O", "qcow2", top, "out.qcow2")
	if r.code != 0 || !strings.HasSuffix(r.stderr, "\r    (100.00/100%)\n") || !strings.HasPrefix(r.stderr, "\r    (0.00/100%)") {
		t.Errorf("convert -p: exit %d, stderr %q; want progress from 0 to 100%%", r.code, r.stderr)
	}
	if r := hib(t, dir, "convert", "-p", "-O", "qcow2", top, "out2.qcow2"); r.code != 0 || r.stderr != "" {
		t.Errorf("convert -p piped: exit %d, stderr %q; want nothing", r.code, r.stderr)
	}
}

// TestConvertForeignKilledLeavesNoImage: SIGKILL of convert -O qcow2
// while qemu-img writes leaves nothing at DST, qemu-img dies with it
// (Pdeathsig, even when it is stopped), and check of DST names the leftover ".DST.partial-*";
// a re-run makes a complete image.
func TestConvertForeignKilledLeavesNoImage(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img")
	dir := testDir(t)
	writeKillSource(t, filepath.Join(dir, "src.img"))
	cmd := exec.Command(hibdiskBinary(t), "convert", "-O", "qcow2", "src.img", "dst.qcow2")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	partial := filepath.Join(dir, ".dst.qcow2.partial-*")
	deadline := time.Now().Add(30 * time.Second)
	for m, _ := filepath.Glob(partial); len(m) == 0; m, _ = filepath.Glob(partial) {
		if time.Now().After(deadline) {
			t.Fatal("convert never started writing")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	// A stopped qemu-img cannot notice its source is gone: only the
	// SIGKILL Pdeathsig sends ends it.
	child := childPID(t, cmd.Process.Pid)
	if err := syscall.Kill(child, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	waitDead(t, child)
	if _, err := os.Stat(filepath.Join(dir, "dst.qcow2")); err == nil {
		t.Fatal("dst.qcow2 exists after convert was killed (or convert finished before the kill: make the source bigger)")
	}
	left, _ := filepath.Glob(partial)
	if len(left) != 1 {
		t.Fatalf("partial files after the kill: %v, want one", left)
	}
	if r := hib(t, dir, "check", "dst.qcow2"); r.code == 0 || !strings.Contains(r.stderr, "interrupted") || !strings.Contains(r.stderr, filepath.Base(left[0])) {
		t.Errorf("check of the missing dst.qcow2: exit %d, stderr %q; want it to name the leftover", r.code, r.stderr)
	}
	mustHib(t, dir, "convert", "-O", "qcow2", "src.img", "dst.qcow2")
	if r := qemuCompare(filepath.Join(dir, "dst.qcow2"), "qcow2", filepath.Join(dir, "src.img")); r != "Images are identical.\n" {
		t.Errorf("compare after the re-run: %s", r)
	}
	os.Remove(left[0])
}

// childPID is pid's child qemu-img (started by any of its threads).
func childPID(t *testing.T, pid int) int {
	t.Helper()
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var b []byte
	for _, task := range tasks {
		c, _ := os.ReadFile(task)
		b = append(append(b, c...), ' ')
	}
	var child int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n)); bytes.HasPrefix(cmdline, []byte("qemu-img\x00")) {
			child = n
		}
	}
	if child == 0 {
		t.Fatalf("convert (pid %d) runs no qemu-img (children: %q)", pid, b)
	}
	return child
}

// waitDead waits until pid has exited (gone, or a zombie nobody reaped).
func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if _, rest, ok := bytes.Cut(stat, []byte(") ")); ok && (rest[0] == 'Z' || rest[0] == 'X') {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("qemu-img (pid %d) still runs 10s after convert was killed", pid)
}
