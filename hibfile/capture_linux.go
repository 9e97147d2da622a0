package hibfile

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/hibdisk/hibdisk/disklayer"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hibdisk/hibdisk/internal/schema"
)

// CaptureOptions say which Linux processes Capture reads.
type CaptureOptions struct {
	PIDs []int
	// Children adds every descendant of PIDs.
	Children bool
	// NoFreeze reads the processes while they run: no ptrace, no
	// registers, and memory may change while it is read. By default every
	// thread is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT for the
	// capture, which also reads the registers (PTRACE_GETREGS).
	NoFreeze bool
	// ProcRoot is the proc filesystem; "" means /proc.
	ProcRoot string
}

// CaptureResult is what Capture saved.
type CaptureResult struct {
	SaveResult
	Snapshot *Snapshot
	// UnreadableBytes of stored mappings could not be read and were saved
	// as zeros (the snapshot is then StatusPartial).
	UnreadableBytes int64
}

// Capture reads the given Linux processes from /proc and saves them as the
// snapshot of the top layer of the chain at path (see Save):
//
//   - from /proc/PID/stat: name, state, parent; /proc/PID/cwd;
//   - /proc/PID/maps: every mapping; the content of private writable ones
//     is read from /proc/PID/mem and stored at the mapping's blob offset
//     (Layout: a mapping the snapshot below stored for the same pid and
//     address keeps its offset, so a re-capture stores only changed
//     pages);
//   - /proc/PID/fd and fdinfo: path, position and open flags of each fd;
//   - /proc/PID/status SigBlk, SigIgn, SigCgt, SigPnd, ShdPnd: a row for
//     every signal that is caught, ignored, blocked or pending. Handler
//     addresses are not in /proc: they are recorded as unknown (NULL);
//     reading them would mean injecting rt_sigaction calls into the
//     process;
//   - registers: the main thread's user_regs_struct (format: the
//     snapshot's Arch), when the processes are frozen.
//
// Kernel mappings above 2^63 ([vsyscall]) are not recorded. The state
// recorded is the one before freezing. Freezing is not invisible to memory:
// the kernel may write to a frozen or resumed process (an interrupted
// nanosleep stores its remaining time, glibc's rseq area gets the new cpu
// id when a thread resumes on another CPU), so re-capturing an idle process
// can store a page or two.
func Capture(path string, opts CaptureOptions) (CaptureResult, error) {
	fail := func(err error) (CaptureResult, error) {
		return CaptureResult{}, fmt.Errorf("capture into %q: %w", path, err)
	}
	proc := opts.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	pids, err := capturePIDs(proc, opts)
	if err != nil {
		return fail(err)
	}
	prev, blockSize, err := previousSnapshot(path)
	if err != nil {
		return fail(err)
	}
	s := &Snapshot{Timestamp: time.Now().UTC(), Source: "linux-proc", Status: StatusComplete}
	s.KernelVersion, s.Arch = uname()
	s.TotalMemoryKB = memTotalKB(proc)
	for _, pid := range pids {
		p, err := readProcess(proc, pid)
		if err != nil {
			return fail(err)
		}
		s.Processes = append(s.Processes, p)
	}

	// ptrace requests must come from the thread that attached.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	regs := map[int64][]byte{}
	if !opts.NoFreeze {
		frozen, err := freeze(proc, pids)
		defer frozen.thaw()
		if err != nil {
			return fail(err)
		}
		for _, pid := range pids {
			if r, err := registers(pid); err == nil {
				regs[int64(pid)] = r
			}
		}
	}
	// Files and maps are read once the processes stand still.
	for i := range s.Processes {
		p := &s.Processes[i]
		if err := readMapsAndFiles(proc, p); err != nil {
			return fail(err)
		}
		p.RegistersSize = int64(len(regs[p.PID]))
	}
	Layout(s, prev, blockSize, func(_ int64, m Mapping) bool { return storedMapping(m) })
	img, err := openProcImage(proc, s, regs)
	if err != nil {
		return fail(err)
	}
	defer img.close()
	res, err := Save(path, s, img)
	if err != nil {
		return CaptureResult{}, fmt.Errorf("capture: %w", err)
	}
	return CaptureResult{SaveResult: res, Snapshot: s, UnreadableBytes: img.unreadable}, nil
}

// storedMapping: private writable mappings hold the process's own data; the
// rest (code, read-only data, shared memory) a restorer maps from the file
// or shares.
func storedMapping(m Mapping) bool {
	return len(m.Permissions) == 4 && m.Permissions[1] == 'w' && m.Permissions[3] == 'p'
}

func previousSnapshot(path string) (*Snapshot, int64, error) {
	c, err := Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	bs := int64(c.disk.SectorSize())
	v, err := c.Latest()
	if errors.Is(err, ErrNoSnapshot) {
		return nil, bs, nil
	}
	if err != nil {
		return nil, 0, err
	}
	s, err := v.Load()
	return s, bs, err
}

// capturePIDs returns the requested pids and, with Children, their
// descendants, sorted.
func capturePIDs(proc string, opts CaptureOptions) ([]int, error) {
	if len(opts.PIDs) == 0 {
		return nil, errors.New("no pid given")
	}
	set := map[int]bool{}
	for _, pid := range opts.PIDs {
		if _, err := os.Stat(filepath.Join(proc, strconv.Itoa(pid))); err != nil {
			return nil, fmt.Errorf("pid %d: %w", pid, err)
		}
		set[pid] = true
	}
	if opts.Children {
		parents := map[int][]int{}
		entries, err := os.ReadDir(proc)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			st, err := readStat(proc, pid)
			if err != nil {
				continue // exited meanwhile
			}
			parents[st.ppid] = append(parents[st.ppid], pid)
		}
		queue := slices.Clone(opts.PIDs)
		for len(queue) > 0 {
			pid := queue[0]
			queue = queue[1:]
			for _, c := range parents[pid] {
				if !set[c] {
					set[c] = true
					queue = append(queue, c)
				}
			}
		}
	}
	return slices.Sorted(mapKeys(set)), nil
}

type procStat struct {
	name  string
	state string
	ppid  int
}

var stateNames = map[byte]string{
	'R': "running", 'S': "sleeping", 'D': "disk-sleep", 'T': "stopped", 't': "tracing-stop",
	'Z': "zombie", 'X': "dead", 'I': "idle", 'P': "parked", 'W': "waking",
}

func readStat(proc string, pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	open, close := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || close < open {
		return procStat{}, fmt.Errorf("pid %d: malformed stat %q", pid, b)
	}
	fields := strings.Fields(string(b[close+1:]))
	if len(fields) < 2 {
		return procStat{}, fmt.Errorf("pid %d: malformed stat %q", pid, b)
	}
	st := procStat{name: string(b[open+1 : close]), state: fields[0]}
	if len(fields[0]) == 1 {
		if n, ok := stateNames[fields[0][0]]; ok {
			st.state = n
		}
	}
	st.ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return procStat{}, fmt.Errorf("pid %d: malformed stat ppid %q", pid, fields[1])
	}
	return st, nil
}

// readProcess reads what must be read before freezing (the state) and
// what does not change with it (cwd, signals).
func readProcess(proc string, pid int) (Process, error) {
	st, err := readStat(proc, pid)
	if err != nil {
		return Process{}, fmt.Errorf("read pid %d: %w", pid, err)
	}
	dir := filepath.Join(proc, strconv.Itoa(pid))
	p := Process{PID: int64(pid), ParentPID: int64(st.ppid), Name: st.name, State: st.state}
	if cwd, err := os.Readlink(filepath.Join(dir, "cwd")); err == nil {
		p.CwdPath = cwd
	}
	p.Signals, err = readSignals(dir)
	if err != nil {
		return Process{}, fmt.Errorf("read pid %d: %w", pid, err)
	}
	return p, nil
}

func readSignals(dir string) ([]Signal, error) {
	f, err := os.Open(filepath.Join(dir, "status"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	masks := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch k {
		case "SigBlk", "SigIgn", "SigCgt", "SigPnd", "ShdPnd":
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("status %s %q: %w", k, v, err)
			}
			masks[k] = n
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var out []Signal
	for sig := 1; sig <= 64; sig++ {
		bit := uint64(1) << (sig - 1)
		g := Signal{Number: int64(sig), Disposition: DispositionDefault}
		var flags []string
		switch {
		case masks["SigCgt"]&bit != 0:
			g.Disposition = DispositionHandler
		case masks["SigIgn"]&bit != 0:
			g.Disposition = DispositionIgnore
		}
		if masks["SigBlk"]&bit != 0 {
			flags = append(flags, "blocked")
		}
		if (masks["SigPnd"]|masks["ShdPnd"])&bit != 0 {
			flags = append(flags, "pending")
		}
		if g.Disposition == DispositionDefault && len(flags) == 0 {
			continue
		}
		g.Flags = strings.Join(flags, "|")
		out = append(out, g)
	}
	return out, nil
}

func readMapsAndFiles(proc string, p *Process) error {
	dir := filepath.Join(proc, strconv.Itoa(int(p.PID)))
	maps, err := readMaps(dir)
	if err != nil {
		return fmt.Errorf("read pid %d maps: %w", p.PID, err)
	}
	p.Mappings = maps
	p.MemoryStart, p.MemorySize = 0, 0
	for i, m := range maps {
		if i == 0 {
			p.MemoryStart = m.VirtualAddr
		}
		p.MemorySize += m.Size
	}
	files, err := readFiles(dir)
	if err != nil {
		return fmt.Errorf("read pid %d fds: %w", p.PID, err)
	}
	p.Files = files
	return nil
}

func readMaps(dir string) ([]Mapping, error) {
	f, err := os.Open(filepath.Join(dir, "maps"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	page := int64(os.Getpagesize())
	var out []Mapping
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// start-end perms offset dev inode [path]
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			return nil, fmt.Errorf("malformed maps line %q", sc.Text())
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		offset, err3 := strconv.ParseUint(fields[2], 16, 64)
		if !ok || err1 != nil || err2 != nil || err3 != nil || end <= start {
			return nil, fmt.Errorf("malformed maps line %q", sc.Text())
		}
		if end > math.MaxInt64 {
			continue // kernel address ([vsyscall]): not the process's memory
		}
		m := Mapping{
			VirtualAddr: int64(start), Size: int64(end - start), PageSize: page,
			Permissions: fields[1], FileOffset: int64(offset),
		}
		if len(fields) > 5 {
			m.Path = strings.Join(fields[5:], " ")
		}
		var flags []string
		if strings.HasSuffix(m.Permissions, "s") {
			flags = append(flags, "shared")
		} else {
			flags = append(flags, "private")
		}
		if fields[4] == "0" {
			flags = append(flags, "anonymous")
		}
		m.Flags = strings.Join(flags, ",")
		out = append(out, m)
	}
	return out, sc.Err()
}

func readFiles(dir string) ([]File, error) {
	entries, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return nil, err
	}
	var out []File
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(filepath.Join(dir, "fd", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		f := File{FD: int64(fd), Path: target}
		info, err := os.ReadFile(filepath.Join(dir, "fdinfo", e.Name()))
		if err == nil {
			for _, line := range strings.Split(string(info), "\n") {
				k, v, _ := strings.Cut(line, ":")
				v = strings.TrimSpace(v)
				switch k {
				case "pos":
					f.Position, _ = strconv.ParseInt(v, 10, 64)
				case "flags":
					if n, err := strconv.ParseInt(v, 8, 64); err == nil {
						f.Flags = schema.OpenFlagNames(n)
					}
				}
			}
		}
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b File) int { return cmpInt(a.FD, b.FD) })
	return out, nil
}

func uname() (release, machine string) {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "", ""
	}
	str := func(b [65]int8) string {
		var s []byte
		for _, c := range b {
			if c == 0 {
				break
			}
			s = append(s, byte(c))
		}
		return string(s)
	}
	return str(u.Release), str(u.Machine)
}

func memTotalKB(proc string) int64 {
	b, err := os.ReadFile(filepath.Join(proc, "meminfo"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// ptrace requests not in package syscall.
const (
	ptraceSeize     = 0x4206
	ptraceInterrupt = 0x4207
	wallFlag        = 0x40000000 // __WALL: wait for threads too
	ptraceEventStop = 128        // PTRACE_EVENT_STOP
)

// frozenThreads are the threads Capture stopped.
type frozenThreads []int

func (f frozenThreads) thaw() {
	for _, tid := range f {
		syscall.PtraceDetach(tid)
	}
}

// freeze stops every thread of pids with PTRACE_SEIZE and
// PTRACE_INTERRUPT (no signal is sent, so the processes do not notice
// beyond the pause). Threads that appear meanwhile are caught by listing
// the tasks until no new one shows up.
func freeze(proc string, pids []int) (frozenThreads, error) {
	var frozen frozenThreads
	seen := map[int]bool{}
	for _, pid := range pids {
		for {
			tids, err := os.ReadDir(filepath.Join(proc, strconv.Itoa(pid), "task"))
			if err != nil {
				return frozen, fmt.Errorf("freeze pid %d: %w", pid, err)
			}
			added := false
			for _, e := range tids {
				tid, err := strconv.Atoi(e.Name())
				if err != nil || seen[tid] {
					continue
				}
				seen[tid] = true
				added = true
				if err := stopThread(tid); err != nil {
					return frozen, fmt.Errorf("freeze pid %d thread %d: %w", pid, tid, err)
				}
				frozen = append(frozen, tid)
			}
			if !added {
				break
			}
		}
	}
	return frozen, nil
}

func stopThread(tid int) error {
	if _, _, errno := syscall.Syscall6(syscall.SYS_PTRACE, ptraceSeize, uintptr(tid), 0, 0, 0, 0); errno != 0 {
		return fmt.Errorf("PTRACE_SEIZE: %w", errno)
	}
	if _, _, errno := syscall.Syscall6(syscall.SYS_PTRACE, ptraceInterrupt, uintptr(tid), 0, 0, 0, 0); errno != 0 {
		syscall.PtraceDetach(tid)
		return fmt.Errorf("PTRACE_INTERRUPT: %w", errno)
	}
	for range 16 {
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(tid, &ws, wallFlag, nil); err != nil {
			syscall.PtraceDetach(tid)
			return fmt.Errorf("wait: %w", err)
		}
		if !ws.Stopped() {
			return fmt.Errorf("thread ended while freezing (status %#x)", uint32(ws))
		}
		if ws.StopSignal() == syscall.SIGTRAP && ws.TrapCause() == ptraceEventStop {
			return nil
		}
		// A signal arrived first (signal-delivery stop): deliver it and
		// wait for the interrupt's stop, which stays pending.
		if err := syscall.PtraceCont(tid, int(ws.StopSignal())); err != nil {
			syscall.PtraceDetach(tid)
			return fmt.Errorf("continue with signal %v: %w", ws.StopSignal(), err)
		}
	}
	syscall.PtraceDetach(tid)
	return errors.New("did not stop")
}

// registers returns the main thread's user_regs_struct, little-endian.
func registers(pid int) ([]byte, error) {
	var regs syscall.PtraceRegs
	if err := syscall.PtraceGetRegs(pid, &regs); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, &regs); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// procImage reads stored ranges from the processes: registers from
// memory, mappings from /proc/PID/mem.
type procImage struct {
	regions    []procRegion // sorted by blob offset
	mems       map[int64]*os.File
	unreadable int64
}

type procRegion struct {
	disklayer.Range
	pid  int64
	addr int64
	regs []byte // registers, or nil for memory
}

func openProcImage(proc string, s *Snapshot, regs map[int64][]byte) (*procImage, error) {
	img := &procImage{mems: map[int64]*os.File{}}
	for _, p := range s.Processes {
		if r := regs[p.PID]; p.RegistersOffset != nil && len(r) > 0 {
			img.regions = append(img.regions, procRegion{Range: disklayer.Range{Off: *p.RegistersOffset, Len: int64(len(r))}, pid: p.PID, regs: r})
		}
		opened := false
		for _, m := range p.Mappings {
			if m.BlobOffset == nil {
				continue
			}
			if !opened {
				f, err := os.Open(filepath.Join(proc, strconv.Itoa(int(p.PID)), "mem"))
				if err != nil {
					img.close()
					return nil, fmt.Errorf("pid %d: %w", p.PID, err)
				}
				img.mems[p.PID] = f
				opened = true
			}
			img.regions = append(img.regions, procRegion{Range: disklayer.Range{Off: *m.BlobOffset, Len: m.Size}, pid: p.PID, addr: m.VirtualAddr})
		}
	}
	slices.SortFunc(img.regions, func(a, b procRegion) int { return cmpInt(a.Off, b.Off) })
	return img, nil
}

func (img *procImage) close() {
	for _, f := range img.mems {
		f.Close()
	}
}

// Unreadable implements UnreadableImage.
func (img *procImage) Unreadable() int64 { return img.unreadable }

// ReadAt fills p with the content at blob offset off: zeros outside the
// regions, and page by page zeros where the process's memory cannot be
// read (counted in unreadable).
func (img *procImage) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	end := off + int64(len(p))
	i, _ := slices.BinarySearchFunc(img.regions, off, func(r procRegion, off int64) int { return cmpInt(r.End(), off+1) })
	for ; i < len(img.regions) && img.regions[i].Off < end; i++ {
		r := img.regions[i]
		lo, hi := max(r.Off, off), min(r.End(), end)
		if hi <= lo {
			continue
		}
		dst := p[lo-off : hi-off]
		if r.regs != nil {
			copy(dst, r.regs[lo-r.Off:])
			continue
		}
		img.readMemory(img.mems[r.pid], dst, r.addr+(lo-r.Off))
	}
	return len(p), nil
}

func (img *procImage) readMemory(mem *os.File, dst []byte, addr int64) {
	if n, err := mem.ReadAt(dst, addr); err == nil || n == len(dst) {
		return
	}
	// Page by page, so one unreadable page costs only itself.
	page := int64(os.Getpagesize())
	for done := int64(0); done < int64(len(dst)); {
		n := min(page-(addr+done)%page, int64(len(dst))-done)
		if got, err := mem.ReadAt(dst[done:done+n], addr+done); err != nil && int64(got) != n {
			clear(dst[done : done+n])
			img.unreadable += n
		}
		done += n
	}
}
