package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// errConnLost marks a request that failed because its connection broke:
// the Client retries it on a new connection.
var errConnLost = errors.New("connection to the NBD server lost")

// clientConn is one connection in transmission: requests are written
// under wmu and answered, in any order, to the reader goroutine, which
// hands each reply to the call waiting for its handle.
type clientConn struct {
	nc  net.Conn
	br  *bufio.Reader
	neg negotiated

	wmu sync.Mutex // serialises request writes
	mu  sync.Mutex // guards calls, next and err
	// calls are the requests in flight by handle.
	calls map[uint64]*call
	next  uint64
	err   error // why the connection broke; nil while it works
}

// call is one request in flight.
type call struct {
	typ    uint16
	off    uint64
	length uint32
	buf    []byte       // READ: where the data goes
	extent []statusDesc // BLOCK_STATUS: the descriptors received
	data   int          // READ: bytes of data received (holes are not data)
	err    error        // the server's error (an Errno), or errConnLost
	done   chan struct{}
}

// statusDesc is one base:allocation descriptor.
type statusDesc struct {
	length, flags uint32
}

func newClientConn(nc net.Conn, br *bufio.Reader, neg negotiated) *clientConn {
	cc := &clientConn{nc: nc, br: br, neg: neg, calls: map[uint64]*call{}}
	go cc.readLoop()
	return cc
}

// start sends a request and returns its call; payload is WRITE's data.
func (cc *clientConn) start(c *call, flags uint16, payload []byte) error {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return fmt.Errorf("%w: %w", errConnLost, cc.err)
	}
	handle := cc.next
	cc.next++
	cc.calls[handle] = c
	cc.mu.Unlock()

	var h [requestHeaderLen]byte
	binary.BigEndian.PutUint32(h[0:], magicRequest)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], c.typ)
	binary.BigEndian.PutUint64(h[8:], handle)
	binary.BigEndian.PutUint64(h[16:], c.off)
	binary.BigEndian.PutUint32(h[24:], c.length)
	cc.wmu.Lock()
	_, err := cc.nc.Write(h[:])
	if err == nil && len(payload) > 0 {
		_, err = cc.nc.Write(payload)
	}
	cc.wmu.Unlock()
	if err != nil {
		cc.fail(fmt.Errorf("send request: %w", err))
	}
	return nil
}

// fail breaks the connection: it is closed, so the reader goroutine
// stops and ends every call in flight with errConnLost; later calls are
// refused. Only the reader completes calls, so a call's buffer is never
// written after its caller saw it done.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err == nil {
		cc.err = err
	}
	cc.mu.Unlock()
	cc.nc.Close()
}

// drain ends every call in flight; the reader calls it when it stops.
func (cc *clientConn) drain(err error) {
	cc.fail(err)
	cc.mu.Lock()
	calls := cc.calls
	cc.calls = map[uint64]*call{}
	err = cc.err
	cc.mu.Unlock()
	for _, c := range calls {
		c.err = fmt.Errorf("%w: %w", errConnLost, err)
		close(c.done)
	}
}

// broken reports whether the connection has failed.
func (cc *clientConn) broken() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err != nil
}

// take removes the call for handle from the table; with done it is
// completed by the caller.
func (cc *clientConn) take(handle uint64, done bool) (*call, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	c, ok := cc.calls[handle]
	if !ok {
		return nil, fmt.Errorf("reply for unknown handle %d", handle)
	}
	if done {
		delete(cc.calls, handle)
	}
	return c, nil
}

func (cc *clientConn) readLoop() {
	for {
		if err := cc.readReply(); err != nil {
			cc.drain(err)
			return
		}
	}
}

// readReply reads one simple reply or one structured reply chunk.
func (cc *clientConn) readReply() error {
	var m [4]byte
	if _, err := io.ReadFull(cc.br, m[:]); err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimpleReply:
		return cc.readSimple()
	case magicStructReply:
		return cc.readChunk()
	}
	return fmt.Errorf("bad reply magic % x", m)
}

func (cc *clientConn) readSimple() error {
	var h [simpleReplyLen - 4]byte
	if _, err := io.ReadFull(cc.br, h[:]); err != nil {
		return fmt.Errorf("read reply: %w", err)
	}
	errno, handle := binary.BigEndian.Uint32(h[0:]), binary.BigEndian.Uint64(h[4:])
	c, err := cc.take(handle, true)
	if err != nil {
		return err
	}
	if errno != 0 {
		c.err = Errno(errno)
	} else if c.typ == cmdRead {
		if _, err := io.ReadFull(cc.br, c.buf); err != nil {
			c.err = fmt.Errorf("%w: read data: %w", errConnLost, err)
			close(c.done)
			return err
		}
		c.data = len(c.buf)
	}
	close(c.done)
	return nil
}

func (cc *clientConn) readChunk() error {
	var h [chunkHeaderLen - 4]byte
	if _, err := io.ReadFull(cc.br, h[:]); err != nil {
		return fmt.Errorf("read reply chunk: %w", err)
	}
	flags, typ := binary.BigEndian.Uint16(h[0:]), binary.BigEndian.Uint16(h[2:])
	handle, length := binary.BigEndian.Uint64(h[4:]), binary.BigEndian.Uint32(h[12:])
	done := flags&replyFlagDone != 0
	c, err := cc.take(handle, done)
	if err != nil {
		return err
	}
	if err := cc.chunkPayload(c, typ, length); err != nil {
		if done {
			c.err = fmt.Errorf("%w: %w", errConnLost, err)
			close(c.done)
		}
		return err
	}
	if done {
		close(c.done)
	}
	return nil
}

// chunkPayload reads a structured chunk's payload into c.
func (cc *clientConn) chunkPayload(c *call, typ uint16, length uint32) error {
	switch typ {
	case replyTypeNone:
		if length != 0 {
			return fmt.Errorf("NBD_REPLY_TYPE_NONE with %d bytes", length)
		}
		return nil
	case replyTypeOffsetData, replyTypeOffsetHole:
		return cc.readData(c, typ, length)
	case replyTypeBlockStatus:
		return cc.readStatus(c, length)
	}
	if typ&(1<<15) == 0 {
		return fmt.Errorf("unknown reply chunk type %d", typ)
	}
	b, err := cc.payload(length)
	if err != nil {
		return err
	}
	if len(b) < 6 {
		return fmt.Errorf("error chunk of %d bytes", len(b))
	}
	if c.err == nil {
		c.err = Errno(binary.BigEndian.Uint32(b))
		if msgLen := int(binary.BigEndian.Uint16(b[4:])); msgLen > 0 && 6+msgLen <= len(b) {
			c.err = fmt.Errorf("%w: %s", Errno(binary.BigEndian.Uint32(b)), b[6:6+msgLen])
		}
	}
	return nil
}

func (cc *clientConn) payload(length uint32) ([]byte, error) {
	if length > maxOptionLength {
		return nil, fmt.Errorf("reply chunk of %d bytes", length)
	}
	b := make([]byte, length)
	if _, err := io.ReadFull(cc.br, b); err != nil {
		return nil, fmt.Errorf("read reply chunk: %w", err)
	}
	return b, nil
}

// readData places an OFFSET_DATA or OFFSET_HOLE chunk in c.buf.
func (cc *clientConn) readData(c *call, typ uint16, length uint32) error {
	if c.typ != cmdRead || length < 8 || (typ == replyTypeOffsetHole && length != 12) {
		return fmt.Errorf("reply chunk type %d of %d bytes to command %d", typ, length, c.typ)
	}
	var o [8]byte
	if _, err := io.ReadFull(cc.br, o[:]); err != nil {
		return fmt.Errorf("read reply chunk: %w", err)
	}
	off := binary.BigEndian.Uint64(o[:])
	n := uint64(length - 8)
	if typ == replyTypeOffsetHole {
		var l [4]byte
		if _, err := io.ReadFull(cc.br, l[:]); err != nil {
			return fmt.Errorf("read reply chunk: %w", err)
		}
		n = uint64(binary.BigEndian.Uint32(l[:]))
	}
	if off < c.off || off+n > c.off+uint64(len(c.buf)) || off+n < off {
		return fmt.Errorf("reply chunk for %d+%d outside the request %d+%d", off, n, c.off, len(c.buf))
	}
	p := c.buf[off-c.off : off-c.off+n]
	if typ == replyTypeOffsetHole {
		clear(p)
		return nil
	}
	n2, err := io.ReadFull(cc.br, p)
	c.data += n2
	return err
}

// readStatus collects a BLOCK_STATUS chunk's descriptors for
// base:allocation.
func (cc *clientConn) readStatus(c *call, length uint32) error {
	b, err := cc.payload(length)
	if err != nil {
		return err
	}
	if c.typ != cmdBlockStatus || len(b) < 12 || (len(b)-4)%8 != 0 {
		return fmt.Errorf("block status chunk of %d bytes to command %d", len(b), c.typ)
	}
	if binary.BigEndian.Uint32(b) != cc.neg.allocCtx {
		return nil // another context: not asked for, ignored
	}
	for i := 4; i < len(b); i += 8 {
		c.extent = append(c.extent, statusDesc{binary.BigEndian.Uint32(b[i:]), binary.BigEndian.Uint32(b[i+4:])})
	}
	return nil
}
