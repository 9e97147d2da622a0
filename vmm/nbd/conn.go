package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Requests whose backend calls took less than this on average are
// executed by the reader itself: handing a request to another goroutine
// costs more than that in wakeups (on 2 cores, inline execution doubles
// the IOPS of an in-memory backend at queue depth 1 and 32). Slower
// backends get the worker pool, so that requests overlap.
const inlineMaxLatency = 50 * time.Microsecond

// Per-connection concurrency limits. QEMU keeps at most 16 requests in
// flight; more are accepted and queued, and the byte budget bounds the
// payload memory one client can pin (a request of MaxRequestLength always
// fits).
const (
	maxWorkers       = 16
	maxInFlight      = 64
	maxInFlightBytes = 2 * MaxRequestLength
)

// conn is one client connection.
//
// Transmission phase: the goroutine running serve reads requests (and
// WRITE payloads) in order and hands them to up to maxWorkers worker
// goroutines, started on demand; workers execute requests against the
// backend and send their replies, serialized by wmu, in whatever order
// they finish. The reader stops at NBD_CMD_DISC, at end of stream, on a
// protocol violation, or when Shutdown sets a read deadline; it then waits
// for every dispatched request to be answered before the connection
// closes.
type conn struct {
	srv *Server
	// raw is the accepted connection; nc is what the session reads and
	// writes: raw, or a TLS connection over it after NBD_OPT_STARTTLS.
	// Only the connection's own goroutines use nc; deadlines and forced
	// closes from elsewhere use raw.
	raw, nc net.Conn
	br      *bufio.Reader
	remote  string
	// tls: TLS was initiated. refused: Server.Authorize refused the
	// client's certificate (tls.go).
	tls     bool
	refused error
	// full: the server had MaxConnections (this many) when this one
	// came; it is refused (tls.go tlsGate).
	full int

	// Negotiated during the handshake; read-only afterwards.
	noZeroes    bool
	structured  bool
	metaExport  *Export // export base:allocation was selected for, or nil
	exp         *Export
	tflags      uint16
	blockStatus bool // base:allocation selected for exp

	stopping atomic.Bool // Shutdown asked the reader to stop

	queue    chan *request
	inline   *worker      // the reader's own worker; see inlineOK
	latency  atomic.Int64 // moving average of request execution time, ns
	workers  int          // started worker goroutines; reader only
	pending  atomic.Int32 // dispatched, not yet answered
	inflight sync.WaitGroup
	budget   budget

	wmu    sync.Mutex // serializes replies
	broken bool       // a reply write failed; guarded by wmu
	// corked holds replies to requests the reader executed inline while
	// more requests were already buffered: they go out together, in one
	// write, when the reader is about to wait for the client, or with the
	// next reply a worker sends. Guarded by wmu.
	corked []byte

	// behind carries large read replies of requests the reader executed
	// to a goroutine that writes them (sendBehind); nil until the first.
	behind chan behindReply
}

// maxCorked bounds the replies held back in conn.corked.
const maxCorked = 64 << 10

// behindMinBytes is the smallest read reply the reader hands to the
// connection's sender goroutine instead of writing it itself, when more
// requests are already buffered. Executed inline, a 64 KiB READ was
// ~30 us of backend and ~14 us of socket write on one core (qemu-img
// bench at depth 16: the server's CPU equalled the wall time); written
// behind, the next request's read overlaps the write on the other core.
// Small replies are corked instead: for them a handoff costs more than
// the write.
const behindMinBytes = 32 << 10

// behindReply is a reply written by the sender goroutine: b, part of
// buf, answers r.
type behindReply struct {
	buf *[]byte
	b   []byte
	r   *request
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{srv: s, raw: nc, nc: nc, remote: nc.RemoteAddr().String()}
	c.budget.cond.L = &c.budget.mu
	return c
}

// stopReading makes the reader stop at the next request boundary that
// needs more bytes from the socket (used by Shutdown).
func (c *conn) stopReading() {
	c.stopping.Store(true)
	c.raw.SetReadDeadline(time.Now())
}

func (c *conn) serve() {
	defer func() { c.nc.Close() }() // the TLS connection once there is one: it says goodbye
	c.br = bufio.NewReaderSize(c.nc, 64<<10)
	timeout := c.srv.HandshakeTimeout
	if timeout == 0 {
		timeout = DefaultHandshakeTimeout
	}
	if timeout > 0 {
		c.raw.SetDeadline(time.Now().Add(timeout))
	}
	if err := c.handshake(); err != nil {
		if !errors.Is(err, errEndSession) && !c.stopping.Load() {
			c.srv.logf(slog.LevelInfo, "nbd: handshake ended", "remote", c.remote, "err", err)
		}
		return
	}
	if timeout > 0 && !c.stopping.Load() {
		c.raw.SetDeadline(time.Time{})
	}
	c.transmit()
}

// request is one transmission-phase request.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    int64
	length uint32
	cost   int64   // bytes charged to the connection's budget
	buf    *[]byte // WRITE payload
	errno  Errno   // set when the request was refused before execution
	errMsg string
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

func (c *conn) transmit() {
	c.queue = make(chan *request, maxInFlight)
	c.inline = newWorker(c)
	var hdr [requestHeaderLen]byte
	disc := false
	for {
		if c.br.Buffered() < requestHeaderLen {
			c.uncork()
		}
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			if !errors.Is(err, io.EOF) && !c.stopping.Load() && !errors.Is(err, net.ErrClosed) {
				c.srv.logf(slog.LevelInfo, "nbd: read request", "remote", c.remote, "err", err)
			}
			break
		}
		if m := binary.BigEndian.Uint32(hdr[0:]); m != magicRequest {
			// The stream is out of sync; nothing after this can be
			// trusted, so the spec's hard disconnect is the only option.
			c.srv.logf(slog.LevelWarn, "nbd: bad request magic, disconnecting", "remote", c.remote, "magic", m)
			break
		}
		r := requestPool.Get().(*request)
		*r = request{
			flags:  binary.BigEndian.Uint16(hdr[4:]),
			typ:    binary.BigEndian.Uint16(hdr[6:]),
			handle: binary.BigEndian.Uint64(hdr[8:]),
			length: binary.BigEndian.Uint32(hdr[24:]),
		}
		off := binary.BigEndian.Uint64(hdr[16:])
		if r.typ == cmdDisc {
			requestPool.Put(r)
			disc = true
			break
		}
		c.validate(r, off)
		if r.errno == 0 && (r.typ == cmdRead || r.typ == cmdWrite) {
			r.cost = int64(r.length)
		}
		c.budget.acquire(r.cost, c.uncork)
		if r.typ == cmdWrite {
			stall := c.br.Buffered() < int(r.length)
			if stall {
				c.uncork()
				c.payloadDeadline(true)
			}
			err := c.readPayload(r)
			if stall {
				c.payloadDeadline(false)
			}
			if err != nil {
				c.budget.release(r.cost)
				c.freeRequest(r)
				if !c.stopping.Load() {
					c.srv.logf(slog.LevelInfo, "nbd: read write payload", "remote", c.remote, "err", err)
				}
				break
			}
		}
		if c.inlineOK(r) {
			c.runInline(r)
		} else {
			c.dispatch(r)
		}
	}
	c.uncork()
	c.inflight.Wait()
	close(c.queue)
	if c.behind != nil {
		close(c.behind)
	}
	if disc && !c.exp.ReadOnly {
		if err := c.exp.Backend.Flush(); err != nil {
			c.srv.logf(slog.LevelWarn, "nbd: flush on disconnect", "remote", c.remote, "export", c.exp.Name, "err", err)
		}
	}
}

// validate checks a request against the negotiated features and the
// export; a refused request gets errno set and is answered without
// touching the backend.
func (c *conn) validate(r *request, off uint64) {
	size := uint64(c.exp.Backend.Size())
	end := off + uint64(r.length) // for messages only; may wrap
	inRange := off <= size && uint64(r.length) <= size-off
	allowed := uint16(cmdFlagFUA) // valid on every command
	write := false
	switch r.typ {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim:
		write = true
	case cmdWriteZeroes:
		write = true
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdFlush, cmdCache:
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	default:
		r.refuse(EINVAL, fmt.Sprintf("unknown command %d", r.typ))
		return
	}
	r.off = int64(off) // used only when inRange, so at most size
	switch {
	case r.flags&^allowed != 0:
		r.refuse(EINVAL, fmt.Sprintf("unsupported flags %#x for command %d", r.flags&^allowed, r.typ))
	case write && c.exp.ReadOnly:
		r.refuse(EPERM, "export is read-only")
	case (r.typ == cmdRead || r.typ == cmdWrite) && r.length > MaxRequestLength:
		r.refuse(EINVAL, fmt.Sprintf("request length %d exceeds the maximum %d", r.length, MaxRequestLength))
	case r.typ == cmdBlockStatus && !c.blockStatus:
		r.refuse(EINVAL, "base:allocation was not negotiated")
	case r.typ == cmdBlockStatus && r.length == 0:
		r.refuse(EINVAL, "zero-length block status")
	case r.typ == cmdFlush:
		// Offset and length are reserved; ignore them.
	case !inRange && (r.typ == cmdWrite || r.typ == cmdWriteZeroes):
		r.refuse(ENOSPC, fmt.Sprintf("range [%d, %d) is past the end of the %d-byte export", off, end, size))
	case !inRange:
		r.refuse(EINVAL, fmt.Sprintf("range [%d, %d) is past the end of the %d-byte export", off, end, size))
	}
}

func (r *request) refuse(e Errno, msg string) {
	r.errno, r.errMsg = e, msg
}

// readPayload reads a WRITE's data, or skips it for a refused request so
// that the stream stays in sync.
// payloadDeadline bounds the wait for a WRITE's payload (on) or lifts
// the bound (off): a client that sends a header and stalls is dropped
// after Server.PayloadTimeout instead of holding its payload buffer and
// its place in the budget. Waiting for the next request has no bound (a
// guest may idle for hours).
func (c *conn) payloadDeadline(on bool) {
	timeout := c.srv.PayloadTimeout
	if timeout == 0 {
		timeout = DefaultPayloadTimeout
	}
	if timeout < 0 {
		return
	}
	if on {
		c.raw.SetReadDeadline(time.Now().Add(timeout))
		return
	}
	c.raw.SetReadDeadline(time.Time{})
	if c.stopping.Load() {
		c.raw.SetReadDeadline(time.Now()) // Shutdown asked meanwhile (stopReading)
	}
}

func (c *conn) readPayload(r *request) error {
	if r.errno != 0 {
		_, err := c.br.Discard(int(r.length))
		return err
	}
	r.buf = getBuf(int(r.length))
	_, err := io.ReadFull(c.br, *r.buf)
	return err
}

// inlineOK reports whether the reader should execute r itself: refused
// requests (answered without the backend), and reads, writes, block
// status and cache requests while the backend is fast. FLUSH and FUA
// writes wait for durable storage and always go to a worker.
func (c *conn) inlineOK(r *request) bool {
	if r.errno != 0 {
		return true
	}
	switch r.typ {
	case cmdRead, cmdWrite, cmdBlockStatus, cmdCache:
		if r.typ == cmdWrite && r.flags&cmdFlagFUA != 0 {
			return false
		}
		return c.latency.Load() < int64(c.srv.inlineLimit)
	}
	return false
}

func (c *conn) runInline(r *request) {
	c.inflight.Add(1)
	c.pending.Add(1)
	c.inline.run(r)
}

// observe folds one execution time into the moving average (weight 1/8;
// concurrent updates may lose one another, which only delays adaptation).
func (c *conn) observe(d time.Duration) {
	avg := c.latency.Load()
	c.latency.Store(avg + (int64(d)-avg)/8)
}

func (c *conn) dispatch(r *request) {
	c.inflight.Add(1)
	if n := c.pending.Add(1); int(n) > c.workers && c.workers < maxWorkers {
		c.workers++
		go c.worker()
	}
	c.queue <- r
}

func (c *conn) freeRequest(r *request) {
	if r.buf != nil {
		putBuf(r.buf)
	}
	*r = request{}
	requestPool.Put(r)
}

// budget bounds the requests and payload bytes one connection holds.
type budget struct {
	mu    sync.Mutex
	cond  sync.Cond
	reqs  int
	bytes int64
}

// acquire takes n bytes and a request from the budget, calling
// beforeWait first if it has to wait for other requests to finish.
func (b *budget) acquire(n int64, beforeWait func()) {
	b.mu.Lock()
	if b.full(n) {
		b.mu.Unlock()
		beforeWait()
		b.mu.Lock()
	}
	for b.full(n) {
		b.cond.Wait()
	}
	b.reqs++
	b.bytes += n
	b.mu.Unlock()
}

func (b *budget) full(n int64) bool {
	return b.reqs >= maxInFlight || (b.bytes > 0 && b.bytes+n > maxInFlightBytes)
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.reqs--
	b.bytes -= n
	b.mu.Unlock()
	b.cond.Signal()
}

// send writes one reply (or several chunks of one reply) atomically with
// respect to other replies, after any corked ones.
func (c *conn) send(b []byte) {
	c.wmu.Lock()
	if !c.broken {
		var err error
		if len(c.corked) > 0 {
			v := net.Buffers{c.corked, b}
			_, err = v.WriteTo(c.nc)
			c.corked = c.corked[:0]
		} else {
			_, err = c.nc.Write(b)
		}
		if err != nil {
			c.writeFailed(err)
		}
	}
	c.wmu.Unlock()
}

func (c *conn) sendv(v *net.Buffers) {
	c.wmu.Lock()
	if !c.broken {
		if len(c.corked) > 0 {
			*v = append(net.Buffers{c.corked}, *v...)
		}
		if _, err := v.WriteTo(c.nc); err != nil {
			c.writeFailed(err)
		}
		c.corked = c.corked[:0]
	}
	c.wmu.Unlock()
}

// sendBehind hands the reply b (in buf) of r, a request the reader
// executed, to the sender goroutine if the reader has more requests
// buffered and b is large, and reports whether it did. The sender then
// writes it, in order with other replies under wmu, and releases buf and
// r.
func (c *conn) sendBehind(buf *[]byte, b []byte, r *request) bool {
	if len(b) < behindMinBytes || c.br.Buffered() < requestHeaderLen {
		return false
	}
	if c.behind == nil {
		c.behind = make(chan behindReply, maxInFlight)
		go c.sender()
	}
	c.pending.Add(-1)
	c.behind <- behindReply{buf: buf, b: b, r: r} // r is the sender's from here on
	return true
}

// sender writes the replies handed to it, several in one writev when
// they queue up, then releases their requests.
func (c *conn) sender() {
	var batch []behindReply
	for first := range c.behind {
		batch = append(batch[:0], first)
	more:
		for len(batch) < 16 {
			select {
			case next, ok := <-c.behind:
				if !ok {
					break more
				}
				batch = append(batch, next)
			default:
				break more
			}
		}
		v := make(net.Buffers, 0, len(batch))
		for _, x := range batch {
			v = append(v, x.b)
		}
		c.sendv(&v)
		for _, x := range batch {
			putBuf(x.buf)
			c.budget.release(x.r.cost)
			c.freeRequest(x.r)
			c.inflight.Done()
		}
	}
}

// cork holds back a reply of a request the reader executed, if the reader
// has another request buffered and will come back to uncork. It reports
// whether it took the reply.
func (c *conn) cork(parts ...[]byte) bool {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if c.br.Buffered() < requestHeaderLen {
		return false
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken || len(c.corked)+n > maxCorked {
		return false
	}
	for _, p := range parts {
		c.corked = append(c.corked, p...)
	}
	return true
}

// uncork sends the corked replies. The reader calls it before anything
// that may wait for the client.
func (c *conn) uncork() {
	c.wmu.Lock()
	if !c.broken && len(c.corked) > 0 {
		if _, err := c.nc.Write(c.corked); err != nil {
			c.writeFailed(err)
		}
	}
	c.corked = c.corked[:0]
	c.wmu.Unlock()
}

// writeFailed closes the connection after a failed reply: the client can
// no longer parse the stream. Called with wmu held.
func (c *conn) writeFailed(err error) {
	c.broken = true
	if !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.srv.logf(slog.LevelInfo, "nbd: send reply", "remote", c.remote, "err", err)
	}
	c.raw.Close() // not a TLS goodbye: it would wait on the client too
}
