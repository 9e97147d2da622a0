package qemu_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// TestBootDiffOverQCOW2Base: a diff layer over a qcow2 base (qemu-img
// made it from the raw base of TestBootDiffOverRawBase) served by
// `hibdisk serve`: the guest writes and reads its patterns, QEMU's
// `qemu-img compare` finds the export identical to the expected view,
// and the qcow2 is untouched (qemu-img check, sha256).
func TestBootDiffOverQCOW2Base(t *testing.T) {
	guestKit(t)
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-nbd")
	dir := t.TempDir()
	raw, base, top := filepath.Join(dir, "base.img"), filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "job.db")
	writeRawBase(t, raw, diskSize, "base", baseDataLen)
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base)
	baseSum := fileSHA(t, base)
	hibdisk(t, "create", "-b", base, "-F", "qcow2", top)

	sock := socketPath(t, "job.sock")
	srv := startServe(t, sock, top)
	res := runGuest(t, guestproto.TaskPatterns, patternsParams("job"), qemu.Disk{Name: "data", Socket: sock})
	expected := filepath.Join(dir, "expected.img")
	writeExpected(t, raw, expected, "job")
	if out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", nbdUnixURI(sock), expected); !strings.Contains(out, "identical") {
		t.Errorf("qemu-img compare of the export with the expected view: %s", out)
	}
	srv.stop(t)

	checkPatternsJob(t, top, "job", res)
	if out := hibdisk(t, "compare", top, expected); !strings.Contains(out, "identical") {
		t.Errorf("hibdisk compare %s %s: %s", top, expected, out)
	}
	run(t, "qemu-img", "check", "-f", "qcow2", base)
	if fileSHA(t, base) != baseSum {
		t.Errorf("the qcow2 base %s changed", base)
	}
}

// writeExpected writes to dst the view TaskPatterns with seed leaves
// over the raw image src: src with the pattern at both ends.
func writeExpected(t *testing.T, src, dst, seed string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	copy(b, guestproto.PatternBytes(seed, 0, patternLen))
	end := int64(len(b) - patternLen)
	copy(b[end:], guestproto.PatternBytes(seed, end, patternLen))
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs a tool and returns its combined output; a failed exit fails
// the test.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// socketPath is a path for a unix socket in a short directory of its
// own (socket paths are limited to 108 bytes; t.TempDir's are long).
func socketPath(t *testing.T, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hibdisk-sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}

// nbdUnixURI is the NBD URI of the default export at sock.
func nbdUnixURI(sock string) string { return "nbd+unix:///?socket=" + sock }

// execOutput runs a tool bounded by ctx and returns its combined output.
func execOutput(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
