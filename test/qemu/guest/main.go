//go:build linux

// Command guest is /init of the QEMU test guest (see vmm/qemu/guestkit):
// it mounts /dev, /proc and /sys, loads the kernel modules listed in
// /lib/modules/load-order, runs the task named on the kernel command line
// (guestproto.Cmdline) against disks it finds by their virtio serial, prints
// the result to the console (guestproto's line protocol), waits for the
// console to drain, and powers the machine off.
//
// It is PID 1: if it returned, the kernel would panic, so every path ends
// in power-off, and a Go panic is reported as FAIL first.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"golang.org/x/sys/unix"
)

func main() {
	defer func() {
		if r := recover(); r != nil {
			finish(fmt.Errorf("panic: %v", r))
		}
	}()
	finish(runInit())
}

func runInit() error {
	if err := mountSystem(); err != nil {
		return err
	}
	if err := loadModules("/lib/modules"); err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	task, params := guestproto.ParseCmdline(string(cmdline))
	switch task {
	case guestproto.TaskHello:
		return nil
	case guestproto.TaskPatterns:
		return taskPatterns(params)
	case guestproto.TaskExt4:
		return taskExt4(params)
	case guestproto.TaskDiscard:
		return taskDiscard(params)
	case guestproto.TaskWriteUntilError:
		return taskWriteUntilError(params)
	case guestproto.TaskCounter:
		return taskCounter(params)
	case guestproto.TaskReadLoop:
		return taskReadLoop(params)
	case guestproto.TaskSelfHibernate:
		return taskSelfHibernate(params)
	case "":
		return errors.New("no hibdisk.task= on the kernel command line")
	default:
		return fmt.Errorf("unknown task %q", task)
	}
}

// finish prints the result, lets the console drain, and powers off.
func finish(err error) {
	if err != nil {
		say("%s %s", guestproto.Fail, strings.Join(strings.Fields(err.Error()), " "))
	} else {
		say("%s", guestproto.Pass)
	}
	unix.Sync()
	// tcdrain: wait until the UART has sent everything.
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Unreachable unless reboot failed; exiting PID 1 panics the
	// kernel, which -no-reboot turns into QEMU exiting.
	os.Exit(1)
}

func say(format string, args ...any) {
	fmt.Fprintf(os.Stdout, format+"\r\n", args...)
}

func note(key string, value any) { say("%s", guestproto.FormatNote(key, value)) }

func mountSystem() error {
	for _, m := range []struct{ src, dst, fstype string }{
		{"devtmpfs", "/dev", "devtmpfs"},
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
	} {
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// loadModules loads dir/NAME.ko for every name in dir/load-order, in
// that order (dependencies first).
func loadModules(dir string) error {
	order, err := os.ReadFile(filepath.Join(dir, "load-order"))
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(filepath.Join(dir, name+".ko"))
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	return nil
}

// findDisk returns the /dev path of the virtio disk whose serial is
// serial, waiting for the driver to probe it.
func findDisk(serial string) (string, error) {
	if serial == "" {
		return "", errors.New("no disk= parameter")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		paths, _ := filepath.Glob("/sys/block/vd*/serial")
		var seen []string
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			s := strings.TrimSpace(string(b))
			seen = append(seen, s)
			if s == serial {
				return "/dev/" + filepath.Base(filepath.Dir(p)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio disk with serial %q (serials: %q)", serial, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// blockDev is a disk opened with O_DIRECT, so reads come from the device
// (the NBD server) and write errors surface at the write.
type blockDev struct {
	f    *os.File
	size int64
}

func openDisk(serial string) (*blockDev, error) {
	path, err := findDisk(serial)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile("/sys/block/" + filepath.Base(path) + "/size")
	if err != nil {
		f.Close()
		return nil, err
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		f.Close()
		return nil, err
	}
	note("disk-"+serial, path)
	return &blockDev{f: f, size: sectors * 512}, nil
}

// aligned returns an n-byte buffer aligned for O_DIRECT.
func aligned(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (align - 1))
	if off != 0 {
		off = align - off
	}
	return b[off : off+n]
}

func (d *blockDev) writePattern(seed string, off int64, n int) error {
	buf := aligned(n)
	guestproto.Pattern(seed, off, buf)
	if _, err := d.f.WriteAt(buf, off); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", n, off, err)
	}
	return nil
}

func (d *blockDev) read(off int64, n int) ([]byte, error) {
	buf := aligned(n)
	if _, err := d.f.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read %d bytes at %d: %w", n, off, err)
	}
	return buf, nil
}

func (d *blockDev) checkPattern(seed string, off int64, n int) error {
	got, err := d.read(off, n)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, guestproto.PatternBytes(seed, off, n)) {
		return fmt.Errorf("pattern %q at %d+%d does not read back", seed, off, n)
	}
	return nil
}

// writeEnds writes Pattern(seed) over [0, n) and [size-n, size) and
// fsyncs.
func (d *blockDev) writeEnds(seed string, n int64) error {
	for _, off := range []int64{0, d.size - n} {
		if err := d.writePattern(seed, off, int(n)); err != nil {
			return err
		}
	}
	return d.sync()
}

// checkEnds reads back what writeEnds wrote.
func (d *blockDev) checkEnds(seed string, n int64) error {
	for _, off := range []int64{0, d.size - n} {
		if err := d.checkPattern(seed, off, int(n)); err != nil {
			return err
		}
	}
	return nil
}

func (d *blockDev) sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return nil
}

func intParam(params map[string]string, key string, def int64) (int64, error) {
	v, ok := params[key]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("parameter %s=%q: %w", key, v, err)
	}
	return n, nil
}

func taskPatterns(params map[string]string) error {
	d, err := openDisk(params["disk"])
	if err != nil {
		return err
	}
	defer d.f.Close()
	n, err := intParam(params, "len", 64<<10)
	if err != nil {
		return err
	}
	seed := params["seed"]
	if err := d.writeEnds(seed, n); err != nil {
		return err
	}
	if err := d.checkEnds(seed, n); err != nil {
		return err
	}
	if sampleLen, err := intParam(params, "sample-len", 0); err != nil {
		return err
	} else if sampleLen > 0 {
		sampleOff, err := intParam(params, "sample-off", 0)
		if err != nil {
			return err
		}
		b, err := d.read(sampleOff, int(sampleLen))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		note("sample", hex.EncodeToString(sum[:]))
	}
	note("size", d.size)
	return nil
}

func taskExt4(params map[string]string) error {
	path, err := findDisk(params["disk"])
	if err != nil {
		return err
	}
	if err := unix.Mount(path, "/mnt", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s as ext4: %w", path, err)
	}
	if name := params["read"]; name != "" {
		b, err := os.ReadFile(filepath.Join("/mnt", name))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		note("read", hex.EncodeToString(sum[:]))
	}
	if name := params["write"]; name != "" {
		n, err := intParam(params, "len", 100<<10)
		if err != nil {
			return err
		}
		f, err := os.Create(filepath.Join("/mnt", name))
		if err != nil {
			return err
		}
		if _, err := f.Write(guestproto.PatternBytes(params["seed"], 0, int(n))); err != nil {
			f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("fsync %s: %w", name, err)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if name := params["append"]; name != "" {
		return appendTicks(filepath.Join("/mnt", name), params)
	}
	if err := unix.Unmount("/mnt", 0); err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	note("unmounted", 1)
	return nil
}

// appendTicks appends "tick N" lines to path with the filesystem
// mounted, each fsynced before its CountLine is printed, until the
// machine is stopped: a live filesystem whose newest metadata is in its
// journal.
func appendTicks(path string, params map[string]string) error {
	interval, err := intParam(params, "interval-ms", 100)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for n := int64(1); ; n++ {
		if _, err := fmt.Fprintf(f, "tick %d\n", n); err != nil {
			return fmt.Errorf("append tick %d: %w", n, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync tick %d: %w", n, err)
		}
		say("%s%d", guestproto.CountPrefix, n)
		time.Sleep(time.Duration(interval) * time.Millisecond)
	}
}

// discardRanges parses "OFF+LEN,OFF+LEN".
func discardRanges(s string) ([][2]uint64, error) {
	var out [][2]uint64
	for _, r := range strings.Split(s, ",") {
		o, l, ok := strings.Cut(r, "+")
		off, err1 := strconv.ParseUint(o, 0, 64)
		n, err2 := strconv.ParseUint(l, 0, 64)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("discard range %q: want OFF+LEN", r)
		}
		out = append(out, [2]uint64{off, n})
	}
	return out, nil
}

func taskDiscard(params map[string]string) error {
	d, err := openDisk(params["disk"])
	if err != nil {
		return err
	}
	defer d.f.Close()
	off, err := intParam(params, "write-off", 0)
	if err != nil {
		return err
	}
	n, err := intParam(params, "len", 1<<20)
	if err != nil {
		return err
	}
	if err := d.writePattern(params["seed"], off, int(n)); err != nil {
		return err
	}
	if err := d.sync(); err != nil {
		return err
	}
	ranges, err := discardRanges(params["discard"])
	if err != nil {
		return err
	}
	for _, r := range ranges {
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r))); errno != 0 {
			return fmt.Errorf("BLKDISCARD %d+%d: %w", r[0], r[1], errno)
		}
	}
	if err := d.sync(); err != nil {
		return err
	}
	for _, r := range ranges {
		b, err := d.read(int64(r[0]), int(r[1]))
		if err != nil {
			return err
		}
		if i := firstNonZero(b); i >= 0 {
			return fmt.Errorf("discarded range %d+%d reads non-zero at %d", r[0], r[1], int64(r[0])+int64(i))
		}
	}
	note("discarded", len(ranges))
	return nil
}

func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}

func taskWriteUntilError(params map[string]string) error {
	d, err := openDisk(params["disk"])
	if err != nil {
		return err
	}
	defer d.f.Close()
	n, err := intParam(params, "len", 1<<20)
	if err != nil {
		return err
	}
	seed := params["seed"]
	if err := d.writePattern(seed, 0, int(n)); err != nil {
		return err
	}
	if err := d.sync(); err != nil {
		return err
	}
	note("flushed", 1)
	deadline := time.Now().Add(time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		err := d.writePattern(seed+"-late", n+int64(i%16)*65536, 65536)
		if err == nil {
			err = d.sync()
		}
		if err != nil {
			note("io-error", strconv.Quote(err.Error()))
			note("late-writes", i)
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("no I/O error within a minute of the flush")
}

func taskCounter(params map[string]string) error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	note("kernel", unix.ByteSliceToString(uts.Release[:]))
	size, err := intParam(params, "mem", 32<<20)
	if err != nil {
		return err
	}
	interval, err := intParam(params, "interval-ms", 100)
	if err != nil {
		return err
	}
	last, err := intParam(params, "count", 0)
	if err != nil {
		return err
	}
	blocks, err := intParam(params, "blocks", 256)
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	if size < chunk || size%chunk != 0 {
		return fmt.Errorf("mem=%d: want a positive multiple of %d", size, chunk)
	}
	seed := params["seed"]
	// Everything is allocated up front: the loop makes no garbage, so
	// the guest's memory changes little between two counts.
	data := guestproto.PatternBytes(seed, 0, int(size))
	want := make([]byte, chunk)
	var disk *blockDev
	block := aligned(4096)
	if params["disk"] != "" {
		if disk, err = openDisk(params["disk"]); err != nil {
			return err
		}
		defer disk.f.Close()
	}
	note("memory", size)
	for n := int64(1); last == 0 || n <= last; n++ {
		at := (n % (size / chunk)) * chunk
		guestproto.Pattern(seed, at, want)
		if !bytes.Equal(data[at:at+chunk], want) {
			return fmt.Errorf("count %d: the data in memory at %d changed", n, at)
		}
		if disk != nil {
			copy(block, guestproto.CounterBlock(n, len(block)))
			if _, err := disk.f.WriteAt(block, (n%blocks)*int64(len(block))); err != nil {
				return fmt.Errorf("count %d: write: %w", n, err)
			}
		}
		say("%s%d", guestproto.CountPrefix, n)
		time.Sleep(time.Duration(interval) * time.Millisecond)
	}
	return nil
}
