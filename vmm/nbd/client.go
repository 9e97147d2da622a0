package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ClientOptions tune a Client.
type ClientOptions struct {
	// ReconnectDelay is how long requests wait for a lost server to come
	// back (QEMU's reconnect-delay): the client redials with back-off and
	// resends what was in flight (reads and block-status queries are
	// idempotent). A request fails with EIO once the server has been
	// gone this long; redialing goes on in the background until Close.
	// Zero: a lost connection fails every request at once.
	ReconnectDelay time.Duration
	// DialTimeout bounds one connection attempt with its handshake
	// (default 10 s).
	DialTimeout time.Duration
	// RequestTimeout bounds one request's wait for its reply; a server
	// that takes longer is treated as lost (default 60 s).
	RequestTimeout time.Duration
	// TLS is the configuration of an nbds:// target's TLS; nil loads
	// ClientTLS from the target's TLSCertificates directory.
	TLS *tls.Config
}

// ErrClientClosed is returned by a Client after Close.
var ErrClientClosed = errors.New("nbd: client closed")

// Client reads an NBD export (read-only: it is how hibdisk reads remote
// bases and the images qemu-nbd exports for it). Its methods may be
// called from many goroutines; requests are pipelined on one connection.
type Client struct {
	target Target
	opts   ClientOptions
	info   ExportInfo // from the first connection; reconnects must match
	// allocOK: the first connection negotiated base:allocation.
	allocOK bool

	mu        sync.Mutex
	cc        *clientConn // nil while the server is lost
	lostAt    time.Time
	redialing bool
	changed   chan struct{} // closed when cc or permanent changes
	permanent error         // the server came back as another disk
	closed    bool

	// Reconnects counts successful redials; Fetched counts data bytes
	// received from the server (a hole it answers with OFFSET_HOLE
	// crosses the network as 12 bytes and is not counted).
	Reconnects, Fetched atomic.Int64
}

// Dial connects to the export at t and negotiates structured replies and
// block status (base:allocation) when the server offers them.
func Dial(ctx context.Context, t Target, opts ClientOptions) (*Client, error) {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 60 * time.Second
	}
	if t.TLS && opts.TLS == nil {
		if t.TLSCertificates == "" {
			return nil, fmt.Errorf("connect to %s: TLS needs the client's credentials: add ?tls-certificates=DIR (ca-cert.pem, and client-cert.pem and client-key.pem if the server verifies clients)", t.URI())
		}
		name := "localhost"
		if t.Network == "tcp" {
			if host, _, err := net.SplitHostPort(t.Address); err == nil {
				name = host
			}
		}
		cfg, err := ClientTLS(t.TLSCertificates, name)
		if err != nil {
			return nil, fmt.Errorf("connect to %s: %w", t.URI(), err)
		}
		opts.TLS = cfg
	}
	if !t.TLS {
		opts.TLS = nil
	}
	c := &Client{target: t, opts: opts, changed: make(chan struct{})}
	cc, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.cc, c.info, c.allocOK = cc, cc.neg.info, cc.neg.allocOK
	return c, nil
}

// connect opens one connection through its handshake.
func (c *Client) connect(ctx context.Context) (*clientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, c.target.Network, c.target.Address)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.target.URI(), err)
	}
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	br := bufio.NewReaderSize(nc, 256<<10)
	raw := nc
	neg, nc, br, err := clientHandshake(nc, br, c.target.Export, c.opts.TLS)
	if err != nil {
		raw.Close()
		return nil, fmt.Errorf("connect to %s: %w", c.target.URI(), err)
	}
	raw.SetDeadline(time.Time{})
	return newClientConn(nc, br, neg), nil
}

// Info describes the export as the server announced it.
func (c *Client) Info() ExportInfo { return c.info }

// Target is where the client connects.
func (c *Client) Target() Target { return c.target }

// CanBlockStatus reports whether the server answers base:allocation
// queries; without them every byte is data.
func (c *Client) CanBlockStatus() bool { return c.allocOK }

// Close disconnects and stops redialing.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cc := c.cc
	c.cc = nil
	c.signal()
	c.mu.Unlock()
	if cc != nil {
		if !cc.broken() {
			var disc call
			disc.typ, disc.done = cmdDisc, make(chan struct{})
			cc.start(&disc, 0, nil) // no reply: the server closes
		}
		cc.fail(ErrClientClosed)
	}
	return nil
}

// signal wakes everyone waiting for a state change; c.mu is held.
func (c *Client) signal() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// conn returns a working connection, waiting for a lost server to come
// back within ReconnectDelay.
func (c *Client) conn() (*clientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.closed:
			return nil, ErrClientClosed
		case c.permanent != nil:
			return nil, fmt.Errorf("%w: %w", EIO, c.permanent)
		case c.cc != nil:
			return c.cc, nil
		}
		wait := time.Until(c.lostAt.Add(c.opts.ReconnectDelay))
		if wait <= 0 {
			return nil, fmt.Errorf("%w: the NBD server at %s has been unreachable for %v", EIO, c.target.URI(), time.Since(c.lostAt).Round(time.Millisecond))
		}
		if !c.redialing {
			c.redialing = true
			go c.redial()
		}
		ch := c.changed
		c.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-ch:
		case <-timer.C:
		}
		timer.Stop()
		c.mu.Lock()
	}
}

// lost retires a broken connection.
func (c *Client) lost(cc *clientConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cc == cc {
		c.cc = nil
		c.lostAt = time.Now()
	}
}

// redial reconnects with back-off until it succeeds or the client closes.
func (c *Client) redial() {
	backoff := 50 * time.Millisecond
	for {
		cc, err := c.connect(context.Background())
		c.mu.Lock()
		if c.closed {
			c.redialing = false
			c.mu.Unlock()
			if cc != nil {
				cc.fail(ErrClientClosed)
			}
			return
		}
		if err == nil {
			if mismatch := c.sameExport(cc.neg.info); mismatch != nil {
				c.permanent = mismatch
				cc.fail(mismatch)
			} else {
				c.cc = cc
				c.Reconnects.Add(1)
			}
			c.redialing = false
			c.signal()
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		time.Sleep(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// sameExport checks that a reconnect found the disk it lost.
func (c *Client) sameExport(x ExportInfo) error {
	if x.Size != c.info.Size {
		return fmt.Errorf("the export at %s came back with size %d, not %d: it is another disk", c.target.URI(), x.Size, c.info.Size)
	}
	if x.Description != c.info.Description {
		return fmt.Errorf("the export at %s came back as %q, not %q: it is another disk", c.target.URI(), x.Description, c.info.Description)
	}
	return nil
}

// do runs one request, resending it on a new connection when the old
// one breaks.
func (c *Client) do(typ uint16, flags uint16, off uint64, length uint32, buf []byte) (*call, error) {
	for {
		cc, err := c.conn()
		if err != nil {
			return nil, err
		}
		cl := &call{typ: typ, off: off, length: length, buf: buf, done: make(chan struct{})}
		if err := cc.start(cl, flags, nil); err != nil {
			c.lost(cc)
			continue
		}
		timer := time.NewTimer(c.opts.RequestTimeout)
		select {
		case <-cl.done:
		case <-timer.C:
			cc.fail(fmt.Errorf("no reply within %v", c.opts.RequestTimeout))
			<-cl.done
		}
		timer.Stop()
		if errors.Is(cl.err, errConnLost) {
			c.lost(cc)
			if c.opts.ReconnectDelay <= 0 {
				return nil, fmt.Errorf("%w: %w", EIO, cl.err)
			}
			continue
		}
		return cl, cl.err
	}
}

// ReadAt reads len(p) bytes at off, in requests of at most the server's
// maximum block size.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > c.info.Size {
		return 0, fmt.Errorf("read %d bytes at %d of a %d-byte export: %w", len(p), off, c.info.Size, EINVAL)
	}
	piece := int(min(c.info.MaxBlock, MaxRequestLength, readPiece))
	if len(p) <= piece {
		return c.readPiece(p, off)
	}
	// A large read goes out as pieces in flight together, so the server
	// works on the next while this side takes in the last (qemu-nbd
	// serves one connection's requests concurrently): one request at a
	// time left both sides idle half the time.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	firstAt := len(p)
	sem := make(chan struct{}, readsInFlight)
	for done := 0; done < len(p); done += piece {
		n := min(len(p)-done, piece)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if _, err := c.readPiece(p[done:done+n], off+int64(done)); err != nil {
				mu.Lock()
				if done < firstAt {
					first, firstAt = err, done
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return firstAt, first
	}
	return len(p), nil
}

// Large reads are split into pieces of readPiece bytes, readsInFlight of
// them in flight at once.
const (
	readPiece     = 256 << 10
	readsInFlight = 16
)

// readPiece is one READ request.
func (c *Client) readPiece(p []byte, off int64) (int, error) {
	cl, err := c.do(cmdRead, 0, uint64(off), uint32(len(p)), p)
	if err != nil {
		return 0, fmt.Errorf("read %d bytes at %d from %s: %w", len(p), off, c.target.URI(), err)
	}
	c.Fetched.Add(int64(cl.data))
	return len(p), nil
}

// BlockStatus calls fn for the base:allocation runs the server reports
// from off, covering at least one byte and at most length bytes (a
// server may answer less than asked). state is StateHole and StateZero
// flags. Without block status support the whole range is one data run.
func (c *Client) BlockStatus(off, length int64, fn func(off, length int64, state uint32)) error {
	if !c.CanBlockStatus() {
		fn(off, length, 0)
		return nil
	}
	n := uint32(min(length, 1<<31))
	cl, err := c.do(cmdBlockStatus, 0, uint64(off), n, nil)
	if err != nil {
		return fmt.Errorf("block status of %d bytes at %d from %s: %w", n, off, c.target.URI(), err)
	}
	if len(cl.extent) == 0 {
		return fmt.Errorf("block status of %d bytes at %d from %s: the server sent no extent", n, off, c.target.URI())
	}
	for _, d := range cl.extent {
		l := min(int64(d.length), length)
		if l <= 0 {
			break
		}
		fn(off, l, d.flags)
		off += l
		length -= l
	}
	return nil
}
