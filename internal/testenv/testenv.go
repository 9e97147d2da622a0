// Package testenv is what tests share about their environment: the real
// peers (QEMU, libnbd, filesystem tools) they run against.
package testenv

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// RequireTools checks that every tool is on PATH. When one is missing it
// fails the test in CI (env CI set: CI installs every peer, so a missing
// one is a broken setup) and skips it elsewhere, saying which Debian
// package to install.
func RequireTools(t testing.TB, pkg string, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not found: CI must install %s (make deps)", tool, pkg)
			}
			t.Skipf("%s not found; install it with: apt-get install %s", tool, pkg)
		}
	}
}

// SmallFilesystem mounts a tmpfs of the given size (mount's size=
// syntax: "24m") on a new directory and returns it; the test's cleanup
// unmounts it. Tests use it to fill the host filesystem. Mounting needs
// root: elsewhere the test is skipped (CI runs as root).
func SmallFilesystem(t testing.TB, size string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// FillFilesystem writes a file named filler in dir until the filesystem
// is full and returns its path; removing it frees the space again.
func FillFilesystem(t testing.TB, dir string) string {
	t.Helper()
	path := dir + "/filler"
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 64<<10)
	for i := range block {
		block[i] = byte(i) | 1 // not zero: nothing may be sparse
	}
	for {
		n, err := f.Write(block)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			if n == 0 && len(block) == 1 {
				return path
			}
			block = block[:max(1, len(block)/2)]
		}
	}
}
