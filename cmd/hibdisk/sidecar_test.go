package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sidecars lists the SQLite -wal, -shm and -journal files in dir.
func sidecars(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	for _, pattern := range []string{"*-wal", "*-shm", "*-journal"} {
		m, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range m {
			found = append(found, filepath.Base(p))
		}
	}
	return found
}

// TestReadOnlyCommandsLeaveNoSidecars: read-only commands leave no -wal
// or -shm beside the layers they read (SQLite makes them to read a WAL
// database and only a writer removes them), a server stopped cleanly
// leaves none beside its layer or its chain's parents, and a read-only
// command never removes those of a layer another process has open.
func TestReadOnlyCommandsLeaveNoSidecars(t *testing.T) {
	dir := testDir(t)
	mustHib(t, dir, "create", "-s", "8M", "base.db")
	writeChain(t, filepath.Join(dir, "base.db"))
	mustHib(t, dir, "create", "-b", "base.db", "top.db")
	writeChain(t, filepath.Join(dir, "top.db"))
	if s := sidecars(t, dir); len(s) > 0 {
		t.Fatalf("after create and writes: %v beside the layers", s)
	}
	for _, args := range [][]string{
		{"info", "top.db"}, {"info", "--json", "base.db"}, {"map", "top.db"},
		{"check", "top.db"}, {"check", "base.db"}, {"compare", "top.db", "base.db"},
		{"diff", "base.db", "top.db"}, {"convert", "top.db", "out.db"},
		{"convert", "-O", "raw", "top.db", "out.img"}, {"info", "out.db"},
	} {
		r := hib(t, dir, args...)
		if r.code > 1 {
			t.Fatalf("hibdisk %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
		}
		if s := sidecars(t, dir); len(s) > 0 {
			t.Fatalf("hibdisk %s left %v", strings.Join(args, " "), s)
		}
	}

	// While a server has the chain open, its files stay: a read-only
	// command must not take them away from it.
	sock := filepath.Join(dir, "top.sock")
	server := holdLayer(t, dir, "--socket", sock, "top.db")
	running := sidecars(t, dir)
	for _, want := range []string{"top.db-wal", "top.db-shm", "base.db-wal", "base.db-shm"} {
		if !contains(running, want) {
			t.Fatalf("while serving: %v, want %s among them", running, want)
		}
	}
	for _, args := range [][]string{{"info", "top.db"}, {"check", "base.db"}, {"map", "top.db"}} {
		if r := runBinary(t, dir, args...); r.code != 0 {
			t.Fatalf("hibdisk %s while serving: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
		}
		if got := sidecars(t, dir); strings.Join(got, " ") != strings.Join(running, " ") {
			t.Fatalf("hibdisk %s while serving changed the files beside the layers: %v -> %v", strings.Join(args, " "), running, got)
		}
	}
	mustHib(t, dir, "compare", "top.db", "out.db") // the server's view is intact
	// A clean stop leaves nothing.
	if err := server.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- server.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("hibdisk serve did not stop on SIGTERM")
	}
	if s := sidecars(t, dir); len(s) > 0 {
		t.Fatalf("after the server stopped: %v", s)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("the server left its socket %s", sock)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
