package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// Backend is the storage behind one export. Every method may be called
// from several goroutines at once (one per in-flight request, across all
// connections to the export); the backend provides its own locking.
//
// Ranges passed to the backend are always inside [0, Size()): the server
// checks them first. Errors are reported to the client as described under
// Errno.
type Backend interface {
	// Size is the export size in bytes. It must not change while served.
	Size() int64
	// ReadAt fills p from off. A short read must return an error.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off. Unaligned writes must be supported.
	WriteAt(p []byte, off int64) (int, error)
	// Zero makes [off, off+length) read as zeros, preferably by
	// deallocating it; it serves both WRITE_ZEROES and TRIM. It must be
	// fast (no data written), because the server advertises fast zeroing.
	Zero(off, length int64) error
	// Flush makes every completed write durable.
	Flush() error
	// BlockStatus reports the allocation of [off, off+length) by calling
	// fn for consecutive runs, in order, without gaps, covering the range
	// (runs may start before off or end past off+length; the server
	// clips them). state is StateHole|StateZero for a run that is not
	// allocated and reads as zeros, StateZero for allocated zeros, 0 for
	// data. fn returns false when it wants no more runs; BlockStatus then
	// returns nil promptly.
	BlockStatus(off, length int64, fn func(off, length int64, state uint32) bool) error
}

// Export is one named disk a Server offers.
type Export struct {
	// Name is what clients ask for (the part after "/" in an NBD URI).
	// The first export is also the default export, selected by an empty
	// name.
	Name string
	// Description is shown by `nbdinfo --list`; optional.
	Description string
	Backend     Backend
	// ReadOnly refuses every write-type command with EPERM and
	// advertises NBD_FLAG_READ_ONLY.
	ReadOnly bool
	// PreferredBlockSize is advertised in NBD_INFO_BLOCK_SIZE: the size
	// at which aligned I/O avoids read-modify-write (the layer's sector
	// size). Zero means 4096. It must be a power of two >= 512.
	PreferredBlockSize uint32
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN. Set it only if
	// Backend.Flush makes the writes of every connection durable and every
	// connection sees every completed write.
	MultiConn bool
}

// Server serves exports over NBD (fixed newstyle handshake, structured
// replies, base:allocation block status). See the package documentation.
type Server struct {
	exports []*Export
	// Logger receives connection-level events (protocol violations,
	// backend errors). Nil means no logging. Set before serving.
	Logger *slog.Logger

	// TLS, when set, offers NBD_OPT_STARTTLS with this configuration
	// (ServerTLS loads one), and TLSMode says whether clients must use
	// it. Set before serving.
	TLS     *tls.Config
	TLSMode TLSMode
	// Authorize, when set, decides after a client's TLS handshake
	// whether it may go on, from its verified certificates
	// (AllowSubjects); a refused client gets NBD_REP_ERR_POLICY for
	// every option but NBD_OPT_ABORT.
	Authorize func(tls.ConnectionState) error
	// HandshakeTimeout bounds a connection's option negotiation, TLS
	// handshake included: a client that has not entered transmission
	// by then is dropped, so one that stalls holds only its own
	// connection. 0 means DefaultHandshakeTimeout; negative, none.
	HandshakeTimeout time.Duration
	// PayloadTimeout bounds the wait for the payload of a WRITE whose
	// header arrived; the client is dropped past it. 0 means
	// DefaultPayloadTimeout; negative, none.
	PayloadTimeout time.Duration
	// MaxConnections, when positive, limits the connections served at
	// once: a client past it gets the greeting and NBD_REP_ERR_POLICY
	// ("too many connections") for every option, and the connection
	// ends, so that a burst of clients cannot take the existing ones'
	// share of the server.
	MaxConnections int

	// inlineLimit is the backend latency below which requests run on
	// the connection's reader goroutine (inlineMaxLatency); tests set 0
	// to force the worker pool.
	inlineLimit time.Duration

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	served    int // connections counted against MaxConnections
	connsDone sync.WaitGroup
}

// Defaults of Server.HandshakeTimeout and Server.PayloadTimeout.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultPayloadTimeout   = 30 * time.Second
)

// NewServer returns a server for the given exports. Names must be unique
// and at most 4096 bytes; every export needs a Backend.
func NewServer(exports ...Export) (*Server, error) {
	if len(exports) == 0 {
		return nil, errors.New("nbd: no exports")
	}
	s := &Server{
		inlineLimit: inlineMaxLatency,
		listeners:   make(map[net.Listener]struct{}),
		conns:       make(map[*conn]struct{}),
	}
	seen := make(map[string]bool)
	for i := range exports {
		e := exports[i]
		switch {
		case e.Backend == nil:
			return nil, fmt.Errorf("nbd: export %q has no backend", e.Name)
		case seen[e.Name]:
			return nil, fmt.Errorf("nbd: duplicate export name %q", e.Name)
		case len(e.Name) > maxStringLen || len(e.Description) > maxStringLen:
			return nil, fmt.Errorf("nbd: export %q: name or description longer than %d bytes", e.Name, maxStringLen)
		case e.Backend.Size() < 0:
			return nil, fmt.Errorf("nbd: export %q: negative size %d", e.Name, e.Backend.Size())
		}
		if e.PreferredBlockSize == 0 {
			e.PreferredBlockSize = defaultPreferredBlock
		}
		if p := e.PreferredBlockSize; p < 512 || p&(p-1) != 0 || p > MaxRequestLength {
			return nil, fmt.Errorf("nbd: export %q: preferred block size %d is not a power of two in [512, %d]", e.Name, p, MaxRequestLength)
		}
		seen[e.Name] = true
		s.exports = append(s.exports, &e)
	}
	return s, nil
}

// lookup finds an export by name; the empty name is the default export.
func (s *Server) lookup(name string) *Export {
	for _, e := range s.exports {
		if e.Name == name {
			return e
		}
	}
	if name == "" {
		return s.exports[0]
	}
	return nil
}

// Serve accepts connections on l and serves each in its own goroutine
// until Shutdown, when it returns ErrServerClosed. Serve closes l.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				// Out of file descriptors or a transient failure: back
				// off instead of spinning, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		backoff = 0
		go s.ServeConn(nc)
	}
}

// ServeConn serves one client connection and returns when it ends. It
// closes nc.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		nc.Close()
		return
	}
	if s.MaxConnections > 0 && s.served >= s.MaxConnections {
		c.full = s.MaxConnections
	} else {
		s.served++
		defer func() {
			s.mu.Lock()
			s.served--
			s.mu.Unlock()
		}()
	}
	s.conns[c] = struct{}{}
	s.connsDone.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.connsDone.Done()
	}()
	c.serve()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// reading new requests, waits until every request already received has
// been executed and answered, flushes every export, and closes the
// connections. If ctx ends first, the remaining connections are closed
// at once; the exports are flushed either way. It returns the first flush
// error, or ctx's error if it expired.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connsDone.Wait()
		close(done)
	}()
	var ctxErr error
	select {
	case <-done:
	case <-ctx.Done():
		ctxErr = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close()
		}
		s.mu.Unlock()
		<-done
	}
	var flushErr error
	for _, e := range s.exports {
		if e.ReadOnly {
			continue
		}
		if err := e.Backend.Flush(); err != nil && flushErr == nil {
			flushErr = fmt.Errorf("nbd: shutdown: flush export %q: %w", e.Name, err)
		}
	}
	if flushErr != nil {
		return flushErr
	}
	return ctxErr
}

func (s *Server) logf(level slog.Level, msg string, args ...any) {
	if s.Logger != nil {
		s.Logger.Log(context.Background(), level, msg, args...)
	}
}

// ListenUnix listens on a unix socket at path with mode 0600 (only the
// owner may connect). A stale socket file at path is not removed.
func ListenUnix(path string) (net.Listener, error) {
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen on %q: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("nbd: chmod socket %q: %w", path, err)
	}
	return l, nil
}
