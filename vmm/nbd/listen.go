package nbd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// ErrAddress is returned by Listen for a TCP address that is not
// HOST:PORT.
var ErrAddress = errors.New("nbd: want HOST:PORT")

// ListenOptions say where Listen listens when the process was not handed
// a socket.
type ListenOptions struct {
	// TCP, when set, is HOST:PORT to listen on instead of a unix socket.
	// An empty HOST means 127.0.0.1: a server listens on a non-loopback
	// address only when asked to.
	TCP string
	// Unix is the unix socket path, used when TCP is empty. It is made
	// absolute; a stale socket there (one no server answers on) is
	// removed first, a live one is refused.
	Unix string
}

// Listen picks a server's listener: the socket inherited through
// systemd-style socket activation when there is one (activated; see
// ActivationListener), else opts.TCP, else a unix socket at opts.Unix
// with mode 0600 (ListenUnix). where is the listener's address: the
// absolute socket path for a unix socket, HOST:PORT for TCP, the
// inherited socket's address under activation.
//
// Under activation the caller does not own the socket's path and must
// not remove it; otherwise it removes a unix socket it no longer serves.
func Listen(opts ListenOptions) (l net.Listener, where string, activated bool, err error) {
	if l, ok, err := ActivationListener(); err != nil || ok {
		if err != nil {
			return nil, "", false, err
		}
		return l, l.Addr().String(), true, nil
	}
	if opts.TCP != "" {
		host, port, err := net.SplitHostPort(opts.TCP)
		if err != nil {
			return nil, "", false, fmt.Errorf("listen on %q: %w", opts.TCP, ErrAddress)
		}
		if host == "" {
			host = "127.0.0.1" // a non-loopback address only when asked for
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, port))
		if err != nil {
			return nil, "", false, err
		}
		return l, l.Addr().String(), false, nil
	}
	socket := opts.Unix
	if abs, err := filepath.Abs(socket); err == nil {
		socket = abs
	}
	RemoveStaleSocket(socket)
	l, err = ListenUnix(socket)
	if err != nil {
		return nil, "", false, err
	}
	return l, socket, false, nil
}

// RemoveStaleSocket deletes a socket file left by a server that died,
// but never a live server's socket or a file that is not a socket.
func RemoveStaleSocket(path string) {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return
	}
	os.Remove(path)
}

// ActivationListener takes the first socket passed by systemd-style
// socket activation (LISTEN_PID, LISTEN_FDS; fds start at 3), as
// `nbdinfo -- [ hibdisk serve --nbd FILE ]` does. ok is false when the
// process was not activated. It unsets the activation variables, so a
// second call (or a child process) does not take the socket again.
func ActivationListener() (l net.Listener, ok bool, err error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if pid == "" || fds == "" || pid != strconv.Itoa(os.Getpid()) {
		return nil, false, nil
	}
	if n, err := strconv.Atoi(fds); err != nil || n < 1 {
		return nil, false, fmt.Errorf("socket activation: LISTEN_FDS=%q", fds)
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	f := os.NewFile(3, "LISTEN_FD_3")
	defer f.Close()
	l, err = net.FileListener(f)
	if err != nil {
		return nil, false, fmt.Errorf("socket activation: fd 3: %w", err)
	}
	return l, true, nil
}
