// Package guestproto is what the test guest (test/qemu/guest) and the host
// side of the QEMU tests agree on: how a task is passed on the kernel
// command line, the console lines the guest prints, and the data patterns
// it writes, so the host can check them byte for byte.
//
// Console protocol: every line the guest prints starts with Prefix.
//
//	hibdisk-guest: note KEY=VALUE   a fact for the host to check
//	hibdisk-guest: PASS             the task succeeded (last line)
//	hibdisk-guest: FAIL REASON      the task failed (last line)
//
// A run without PASS or FAIL (a panic, a hang) is a failure.
package guestproto

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
)

const (
	// Prefix starts every line the guest prints.
	Prefix = "hibdisk-guest: "
	// Pass is the last line of a successful run.
	Pass = Prefix + "PASS"
	// Fail starts the last line of a failed run.
	Fail = Prefix + "FAIL"
	// Note starts a fact line.
	Note = Prefix + "note "
	// paramPrefix marks the guest's parameters on the kernel command line.
	paramPrefix = "hibdisk."
)

// Task names.
const (
	// TaskPatterns writes Pattern(seed) over [0, len) and [size-len, size)
	// of disk, fsyncs, reads both back from the device, and notes the
	// sha256 of [sample-off, sample-off+sample-len) as "sample".
	TaskPatterns = "patterns"
	// TaskExt4 mounts disk as ext4 at /mnt, notes the sha256 of the file
	// named by read as "read", writes Pattern(seed) of len bytes to the
	// file named by write, fsyncs and unmounts. With append set it does
	// not unmount: it appends "tick N\n" to that file every interval-ms,
	// fsyncs and prints CountPrefix+N, until the machine is stopped.
	TaskExt4 = "ext4"
	// TaskDiscard writes Pattern(seed) over [write-off, write-off+len),
	// fsyncs, then discards each range in discard (OFF+LEN,...), fsyncs,
	// and checks that every discarded range reads back as zeros.
	TaskDiscard = "discard"
	// TaskWriteUntilError writes Pattern(seed) over [0, len), fsyncs,
	// notes "flushed=1", then keeps writing Pattern(seed+"-late") at
	// offset len and fsyncing until an I/O error, which it notes as
	// "io-error"; PASS means an error was seen within a minute.
	TaskWriteUntilError = "write-until-error"
	// TaskHello only prints PASS: a boot smoke test.
	TaskHello = "hello"
	// TaskCounter is a machine to hibernate: it notes its kernel release
	// as "kernel" and keeps mem bytes of Pattern(seed) in memory (noted
	// as "memory"), then counts from 1, one CountLine every interval-ms
	// milliseconds. Before each count it checks one MiB of the data
	// against the pattern (FAIL on a mismatch: memory did not survive),
	// and with disk set it writes the count into 4 KiB block count%blocks
	// of that disk (O_DIRECT). With count set it stops after that count
	// (PASS); otherwise it runs until the machine is stopped.
	TaskCounter = "counter"
	// TaskReadLoop writes and fsyncs Pattern(seed) at both ends of disk
	// as TaskPatterns does (len 0 writes nothing) and notes "written=1";
	// then it reads [read-off, read-off+read-len) in reads of chunk bytes
	// (default 1 MiB), round after round, at least rounds rounds (default
	// 1) and for at least seconds seconds. Every round must read what the
	// first did: it notes "first-round-ms" when the first round is done,
	// then the first round's sha256 as "sample", "rounds", "read-bytes"
	// (the rounds' bytes) and "max-read-ms" (the slowest single read),
	// and last checks the patterns again.
	TaskReadLoop = "read-loop"
)

// CountPrefix starts the counter task's count lines: CountPrefix + N.
const CountPrefix = Prefix + "count "

// ParseCount returns N of a count line.
func ParseCount(line string) (int64, bool) {
	i := strings.Index(line, CountPrefix)
	if i < 0 {
		return 0, false
	}
	var n int64
	if _, err := fmt.Sscan(strings.TrimSpace(line[i+len(CountPrefix):]), &n); err != nil {
		return 0, false
	}
	return n, true
}

// CounterBlock is what the counter task writes into a disk block for
// count n: the text "count N", zero padded to size bytes.
func CounterBlock(n int64, size int) []byte {
	b := make([]byte, size)
	copy(b, fmt.Sprintf("count %d\n", n))
	return b
}

// Cmdline renders a task and its parameters for the kernel command line.
// Values must not contain spaces.
func Cmdline(task string, params map[string]string) string {
	parts := []string{paramPrefix + "task=" + task}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, paramPrefix+k+"="+params[k])
	}
	return strings.Join(parts, " ")
}

// ParseCmdline reads the task and parameters from a kernel command line.
func ParseCmdline(cmdline string) (task string, params map[string]string) {
	params = map[string]string{}
	for _, f := range strings.Fields(cmdline) {
		kv, ok := strings.CutPrefix(f, paramPrefix)
		if !ok {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if k == "task" {
			task = v
		} else {
			params[k] = v
		}
	}
	return task, params
}

// Pattern fills p with the bytes of the pattern named seed at disk offset
// off. The bytes depend on the absolute offset, so a region read back at
// the wrong place does not match.
func Pattern(seed string, off int64, p []byte) {
	h := fnv.New64a()
	h.Write([]byte(seed))
	s := h.Sum64()
	var word [8]byte
	for i := 0; i < len(p); {
		at := off + int64(i)
		binary.LittleEndian.PutUint64(word[:], splitmix(s^uint64(at/8)))
		n := copy(p[i:], word[at%8:])
		i += n
	}
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// PatternBytes returns n bytes of Pattern(seed) at off.
func PatternBytes(seed string, off int64, n int) []byte {
	p := make([]byte, n)
	Pattern(seed, off, p)
	return p
}

// Result is what a run printed, as the host reads it.
type Result struct {
	Passed bool
	Reason string            // after FAIL
	Notes  map[string]string // note lines
	Done   bool              // PASS or FAIL seen
}

// ParseLine folds one console line into r; it reports whether the line
// ended the run (PASS or FAIL).
func (r *Result) ParseLine(line string) bool {
	if r.Notes == nil {
		r.Notes = map[string]string{}
	}
	// Kernel messages share the console and may precede the guest's
	// text on the same line.
	i := strings.Index(line, Prefix)
	if i < 0 {
		return r.Done
	}
	line = strings.TrimRight(line[i:], "\r ")
	switch {
	case line == Pass:
		r.Passed, r.Done = true, true
	case strings.HasPrefix(line, Fail):
		r.Reason = strings.TrimSpace(strings.TrimPrefix(line, Fail))
		r.Done = true
	case strings.HasPrefix(line, Note):
		k, v, _ := strings.Cut(strings.TrimPrefix(line, Note), "=")
		r.Notes[k] = v
	}
	return r.Done
}

// FormatNote renders a note line.
func FormatNote(key string, value any) string {
	return fmt.Sprintf("%s%s=%v", Note, key, value)
}
