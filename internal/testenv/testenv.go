// Package testenv is what tests share about their environment: the real
// peers (QEMU, libnbd, filesystem tools) they run against.
package testenv

import (
	"os"
	"os/exec"
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
