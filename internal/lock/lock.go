// Package lock holds image files the way QEMU's file-posix driver does:
// open-file-description (OFD) byte-range locks on bytes 100+p and 200+p of
// the file, where p is a permission bit. A holder read-locks byte 100+p
// for each permission it uses and byte 200+p for each permission it does
// not share with others; it refuses the file when someone else uses a
// permission it does not share, or does not share one it uses.
//
// Why these locks:
//   - They belong to an open file description, so SQLite opening and
//     closing the same file in the same process does not drop them (POSIX
//     process-associated locks would be), and the kernel drops them when
//     the holder dies, kill -9 included.
//   - The bytes are far below SQLite's own lock bytes (1 GiB and up), so
//     they never interfere with SQLite's locking.
//   - They are QEMU's bytes and bits: a raw image that QEMU holds writable
//     is refused as a hibdisk base, and QEMU refuses to write a raw base
//     that a hibdisk chain holds.
//
// Only read locks are taken, so a file opened read-only (a read-only
// filesystem, no write permission) can be held too.
package lock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Permission bits, QEMU's BLK_PERM_* bit numbers.
const (
	permConsistentRead = 0
	permWrite          = 1
	permResize         = 3

	permBase   = 100 // byte 100+p: the holder uses permission p
	sharedBase = 200 // byte 200+p: the holder does not share permission p
)

// Mode says what a holder does with the file.
type Mode int

const (
	// Shared reads and tolerates every other user, writers included
	// (qemu-img's -U): one-shot read-only commands, which read through
	// SQLite's own consistent snapshots.
	Shared Mode = iota
	// Stable reads and needs the content not to change while held: the
	// parents of an open chain, a read-only export. Writers are refused
	// while it is held, and it is refused while a writer holds the file.
	Stable
	// Exclusive may write: it refuses any other writer and any Stable
	// holder, and they refuse it.
	Exclusive
)

func (m Mode) String() string {
	switch m {
	case Shared:
		return "shared read"
	case Stable:
		return "stable read"
	case Exclusive:
		return "write"
	}
	return "mode " + strconv.Itoa(int(m))
}

// uses and unshares list the permission bits of each mode.
func (m Mode) uses() []int64 {
	if m == Exclusive {
		return []int64{permConsistentRead, permWrite, permResize}
	}
	return []int64{permConsistentRead}
}

func (m Mode) unshares() []int64 {
	if m == Shared {
		return nil
	}
	return []int64{permWrite, permResize}
}

// ErrInUse: another holder's use of the file conflicts with the mode asked
// for. The error's text names the holder when it can be found.
var ErrInUse = errors.New("in use")

// Lock is a held file. Release it exactly once.
type Lock struct {
	f    *os.File
	mode Mode
}

// Acquire holds path in mode, or fails with an error wrapping ErrInUse
// that names the conflicting holder (pid and command line) when it can be
// found, and what to do.
func Acquire(path string, mode Mode) (*Lock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	l := &Lock{f: f, mode: mode}
	for _, p := range mode.uses() {
		if err := l.set(permBase+p, unix.F_RDLCK); err != nil {
			f.Close()
			return nil, err
		}
	}
	for _, p := range mode.unshares() {
		if err := l.set(sharedBase+p, unix.F_RDLCK); err != nil {
			f.Close()
			return nil, err
		}
	}
	// A conflict: someone uses a permission we do not share, or does not
	// share one we use.
	for _, p := range mode.unshares() {
		if err := l.conflict(path, permBase+p); err != nil {
			f.Close()
			return nil, err
		}
	}
	for _, p := range mode.uses() {
		if err := l.conflict(path, sharedBase+p); err != nil {
			f.Close()
			return nil, err
		}
	}
	return l, nil
}

// Mode returns the mode the lock was acquired in.
func (l *Lock) Mode() Mode { return l.mode }

// Release drops the lock.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func (l *Lock) set(b int64, typ int16) error {
	fl := unix.Flock_t{Type: typ, Whence: 0, Start: b, Len: 1}
	if err := unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLK, &fl); err != nil {
		return fmt.Errorf("lock byte %d of %q: %w", b, l.f.Name(), err)
	}
	return nil
}

// conflict reports whether another open file description read-locks byte
// b: a write lock would conflict with it.
func (l *Lock) conflict(path string, b int64) error {
	fl := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: b, Len: 1}
	if err := unix.FcntlFlock(l.f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
		return fmt.Errorf("test lock byte %d of %q: %w", b, path, err)
	}
	if fl.Type == unix.F_UNLCK {
		return nil
	}
	what := "held open by a user that needs it unchanged"
	switch b {
	case permBase + permWrite:
		what = "being written"
	case permBase + permResize:
		what = "being resized"
	}
	holder := describeHolders(l.f, b)
	return &InUseError{Path: path, Mode: l.mode, Holder: holder, What: what}
}

// InUseError is the error Acquire returns for a conflict.
type InUseError struct {
	Path   string
	Mode   Mode
	What   string // "being written", or "held open by a user that needs it unchanged"
	Holder string // "pid 123 (hibdisk serve --nbd x.db)", or "" when not found
}

func (e *InUseError) Error() string {
	by := ""
	if e.Holder != "" {
		by = " by " + e.Holder
	}
	return fmt.Sprintf("%q is %s%s, so it cannot be opened for %s: stop that process first, or read a copy", e.Path, e.What, by, e.Mode)
}

func (e *InUseError) Unwrap() error { return ErrInUse }

// Standalone reports that the message says all a user needs (the file,
// who holds it, what to do): a command line prints it without the
// operations it came through.
func (e *InUseError) Standalone() bool { return true }

// describeHolders names the processes other than this open file
// description's that lock byte b of f's file, from /proc/PID/fdinfo (OFD
// locks carry no pid, so lslocks reads the same place).
func describeHolders(f *os.File, b int64) string {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return ""
	}
	file := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	self := os.Getpid()
	ownFD := strconv.Itoa(int(f.Fd()))
	var names []string
	fdinfos, _ := filepath.Glob("/proc/[0-9]*/fdinfo/*")
	seen := map[int]bool{}
	for _, p := range fdinfos {
		parts := strings.Split(p, "/")
		pid, err := strconv.Atoi(parts[2])
		if err != nil || seen[pid] || (pid == self && parts[4] == ownFD) {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil || !locksByte(string(data), file, b) {
			continue
		}
		seen[pid] = true
		names = append(names, describePID(pid, self))
	}
	return strings.Join(names, ", ")
}

func describePID(pid, self int) string {
	if pid == self {
		return fmt.Sprintf("this process (pid %d)", pid)
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmd) == 0 {
		return fmt.Sprintf("pid %d", pid)
	}
	args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
	args[0] = filepath.Base(args[0])
	return fmt.Sprintf("pid %d (%s)", pid, strings.Join(args, " "))
}

// locksByte reports whether an fdinfo text has a lock line on file
// ("MAJ:MIN:INODE") whose range holds byte b. The kernel merges adjacent
// ranges: "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:123 100 101".
func locksByte(fdinfo, file string, b int64) bool {
	for line := range strings.Lines(fdinfo) {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] != "lock:" || f[len(f)-3] != file {
			continue
		}
		start, err1 := strconv.ParseInt(f[len(f)-2], 10, 64)
		end, err2 := strconv.ParseInt(f[len(f)-1], 10, 64) // "EOF" for open-ended ranges
		if err1 == nil && start <= b && (err2 != nil || b <= end) {
			return true
		}
	}
	return false
}
