package nbd

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestListen: a unix socket replaces a stale one but not a live one nor
// a file that is not a socket; a TCP address without a host is loopback;
// a malformed address is ErrAddress.
func TestListen(t *testing.T) {
	t.Setenv("LISTEN_PID", "") // not activated
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l, where, activated, err := Listen(ListenOptions{Unix: sock})
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if where != sock || activated {
		t.Errorf("where %q activated %v, want %q false", where, activated, sock)
	}
	if _, _, _, err := Listen(ListenOptions{Unix: sock}); err == nil {
		t.Error("a live server's socket was replaced")
	}
	l.Close()

	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := Listen(ListenOptions{Unix: plain}); err == nil {
		t.Error("a plain file was replaced by a socket")
	}

	l, where, _, err = Listen(ListenOptions{TCP: ":0"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if host, _, _ := net.SplitHostPort(where); host != "127.0.0.1" {
		t.Errorf("TCP :0 listens on %q, want 127.0.0.1", where)
	}
	if _, _, _, err := Listen(ListenOptions{TCP: "nocolon"}); !errors.Is(err, ErrAddress) {
		t.Errorf("TCP nocolon: %v, want ErrAddress", err)
	}
}
