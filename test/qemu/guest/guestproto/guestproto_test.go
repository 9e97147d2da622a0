package guestproto

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestPatternIsPositional: any slice of a pattern equals the pattern
// generated at that offset, and seeds and offsets give different bytes.
func TestPatternIsPositional(t *testing.T) {
	whole := PatternBytes("s", 1000, 4096)
	for _, c := range [][2]int{{0, 4096}, {1, 7}, {3, 100}, {4095, 1}, {8, 64}} {
		off, n := c[0], c[1]
		if got := PatternBytes("s", int64(1000+off), n); !bytes.Equal(got, whole[off:off+n]) {
			t.Errorf("PatternBytes(s, %d, %d) differs from the same bytes of a longer pattern", 1000+off, n)
		}
	}
	if bytes.Equal(PatternBytes("s", 0, 64), PatternBytes("t", 0, 64)) {
		t.Error("two seeds give the same pattern")
	}
	if bytes.Equal(PatternBytes("s", 0, 64), PatternBytes("s", 64, 64)) {
		t.Error("two offsets give the same pattern")
	}
}

func TestCmdlineRoundTrip(t *testing.T) {
	params := map[string]string{"disk": "data", "seed": "x", "len": "65536"}
	line := "console=ttyS0 quiet " + Cmdline(TaskPatterns, params) + " other=1"
	task, got := ParseCmdline(line)
	if task != TaskPatterns {
		t.Errorf("task %q, want %q", task, TaskPatterns)
	}
	if diff := cmp.Diff(params, got); diff != "" {
		t.Errorf("params (-want +got):\n%s", diff)
	}
}

func TestParseLine(t *testing.T) {
	var r Result
	for _, l := range []string{
		"[    1.0] virtio_blk virtio0: [vda] 65536 512-byte logical blocks",
		FormatNote("sample", "abc"),
		"[    2.0] random kernel line " + FormatNote("size", 42) + "\r",
	} {
		if r.ParseLine(l) {
			t.Fatalf("line %q ended the run", l)
		}
	}
	if !r.ParseLine(Fail + " disk not found") {
		t.Fatal("FAIL did not end the run")
	}
	want := Result{Passed: false, Reason: "disk not found", Done: true, Notes: map[string]string{"sample": "abc", "size": "42"}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	var ok Result
	if !ok.ParseLine(Pass+"\r") || !ok.Passed {
		t.Errorf("PASS line: %+v", ok)
	}
}
