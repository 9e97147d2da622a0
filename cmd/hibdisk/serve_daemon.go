package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// What `serve` does around serving, as qemu-nbd does: --fork,
// --pid-file, systemd readiness, and exiting after the last client
// without --persistent.

// forkReadyEnv names, in the environment of the server that --fork
// started, the descriptor it reports readiness on. Go cannot fork a
// running process safely, so --fork runs the same command line again
// (os.Args) as a new session, with this variable set and a pipe on that
// descriptor; the server writes one byte on it once it is listening and
// its banner printed, then lets go of the caller's stdout and stderr.
// The pipe closing without that byte means the server failed (it printed
// why on the shared stderr).
const forkReadyEnv = "HIBDISK_SERVE_FORK_READY_FD"

// forkServe runs this serve command line again as a daemon and returns
// once it is ready (nil: the caller exits 0) or has failed (an
// exitError with its exit status, the error already printed by it).
func forkServe() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("--fork: %w", err)
	}
	defer r.Close()
	exe, err := os.Executable()
	if err != nil {
		w.Close()
		return fmt.Errorf("--fork: %w", err)
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), forkReadyEnv+"=3")
	cmd.Stdin = nil // /dev/null
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{w} // fd 3
	// Its own session: the terminal's Ctrl-C and hangup do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return fmt.Errorf("--fork: %w", err)
	}
	var b [1]byte
	if n, _ := r.Read(b[:]); n == 1 {
		cmd.Process.Release()
		return nil
	}
	// No readiness: the server is exiting or has exited.
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return exitError{code: ee.ExitCode()}
	}
	return fmt.Errorf("--fork: the server ended before it was ready (%v)", err)
}

// forkedReady, in a server started by --fork, tells the waiting parent
// that serving has begun and detaches from its stdout and stderr (so a
// caller reading them sees them end). It does nothing otherwise.
func forkedReady() {
	fdText := os.Getenv(forkReadyEnv)
	if fdText == "" {
		return
	}
	os.Unsetenv(forkReadyEnv)
	fd, err := strconv.Atoi(fdText)
	if err != nil {
		return
	}
	if null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		syscall.Dup3(int(null.Fd()), 1, 0)
		syscall.Dup3(int(null.Fd()), 2, 0)
		null.Close()
	}
	f := os.NewFile(uintptr(fd), "fork-ready")
	f.Write([]byte{'R'})
	f.Close()
}

// isForkedServer reports whether this process is a server --fork started.
func isForkedServer() bool { return os.Getenv(forkReadyEnv) != "" }

// writePidFile writes this process's pid to path (--pid-file) through a
// temporary file, so a reader never sees it half-written.
func writePidFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("--pid-file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--pid-file: %w", err)
	}
	return nil
}

// sdNotify sends state ("READY=1\nSTATUS=...") to the service manager
// when NOTIFY_SOCKET names one (systemd's Type=notify); a name starting
// with @ is an abstract socket. Without NOTIFY_SOCKET it does nothing.
func sdNotify(state string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify %s: %w", os.Getenv("NOTIFY_SOCKET"), err)
	}
	return nil
}

// idleListener wraps the server's listener for serve without
// --persistent: idle is closed when the last client has disconnected
// (after at least one connected), as qemu-nbd without -t exits then.
type idleListener struct {
	net.Listener
	mu     sync.Mutex
	active int
	once   sync.Once
	idle   chan struct{}
}

func newIdleListener(l net.Listener) *idleListener {
	return &idleListener{Listener: l, idle: make(chan struct{})}
}

func (l *idleListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.active++
	l.mu.Unlock()
	return &idleConn{Conn: c, l: l}, nil
}

// idleConn tells its listener when it closes (the server closes every
// connection when it ends).
type idleConn struct {
	net.Conn
	l    *idleListener
	once sync.Once
}

func (c *idleConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.active--
		last := c.l.active == 0
		c.l.mu.Unlock()
		if last {
			c.l.once.Do(func() { close(c.l.idle) })
		}
	})
	return err
}
