package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A minimal raw NBD client for protocol tests: it writes exactly the bytes
// a test asks for and decodes replies without any leniency.

// startServer serves exports on a unix socket in a temporary directory and
// shuts the server down when the test ends.
func startServer(t testing.TB, exports ...Export) (*Server, string) {
	t.Helper()
	return startServerWith(t, func(*Server) {}, exports...)
}

// startWorkerServer is startServer with every backend call on a worker
// goroutine, for backends that block until other requests arrive.
func startWorkerServer(t testing.TB, exports ...Export) (*Server, string) {
	t.Helper()
	return startServerWith(t, func(s *Server) { s.inlineLimit = 0 }, exports...)
}

func startServerWith(t testing.TB, configure func(*Server), exports ...Export) (*Server, string) {
	t.Helper()
	s, err := NewServer(exports...)
	if err != nil {
		t.Fatal(err)
	}
	configure(s)
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, s, l)
	return s, sock
}

// serveOn serves s on l until the test ends, then shuts it down and
// checks that it stopped cleanly.
func serveOn(t testing.TB, s *Server, l net.Listener) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
}

type rawClient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

// dial connects and checks the greeting; it does not send client flags.
func dial(t testing.TB, sock string) *rawClient {
	t.Helper()
	return dialNet(t, "unix", sock)
}

// dialNet is dial on any network.
func dialNet(t testing.TB, network, addr string) *rawClient {
	t.Helper()
	nc, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	// Every read and write must finish well within this: a desync shows
	// up as a failure, not a hung test.
	nc.SetDeadline(time.Now().Add(60 * time.Second))
	c := &rawClient{t: t, nc: nc, br: bufio.NewReaderSize(nc, 1<<20)}
	var g [18]byte
	c.readFull(g[:])
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		t.Fatalf("bad greeting % x", g)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", f)
	}
	return c
}

func (c *rawClient) readFull(b []byte) {
	c.t.Helper()
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read: %v", err)
	}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) u32(v uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	c.write(b[:])
}

// expectEOF checks that the server closed the connection.
func (c *rawClient) expectEOF() {
	c.t.Helper()
	var b [1]byte
	if n, err := c.br.Read(b[:]); err == nil {
		c.t.Fatalf("read %d bytes (% x), want the connection closed", n, b[:n])
	}
}

func (c *rawClient) option(opt uint32, data []byte) {
	c.t.Helper()
	b := make([]byte, optionHeaderLen+len(data))
	binary.BigEndian.PutUint64(b[0:], magicIHaveOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	c.write(b)
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *rawClient) optReply() optReply {
	c.t.Helper()
	var h [optionReplyHdrLen]byte
	c.readFull(h[:])
	if m := binary.BigEndian.Uint64(h[0:]); m != magicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		c.t.Fatalf("option reply length %d", n)
	}
	r.data = make([]byte, n)
	c.readFull(r.data)
	return r
}

// infoData encodes NBD_OPT_INFO/GO data.
func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// metaData encodes NBD_OPT_LIST/SET_META_CONTEXT data.
func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// connect performs a full handshake (structured replies and
// base:allocation when structured) and returns the transmission flags.
func connect(t testing.TB, sock, name string, structured bool) (*rawClient, uint16) {
	t.Helper()
	c := dial(t, sock)
	c.u32(flagFixedNewstyle | flagNoZeroes)
	if structured {
		c.option(optStructuredReply, nil)
		if r := c.optReply(); r.typ != repAck {
			t.Fatalf("STRUCTURED_REPLY: reply %#x", r.typ)
		}
		c.option(optSetMetaContext, metaData(name, baseAllocation))
		if r := c.optReply(); r.typ != repMetaContext {
			t.Fatalf("SET_META_CONTEXT: reply %#x", r.typ)
		}
		if r := c.optReply(); r.typ != repAck {
			t.Fatalf("SET_META_CONTEXT: final reply %#x", r.typ)
		}
	}
	c.option(optGo, infoData(name, infoBlockSize))
	var flags uint16
	for {
		r := c.optReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repInfo {
			t.Fatalf("GO: reply %#x %q", r.typ, r.data)
		}
		if binary.BigEndian.Uint16(r.data) == infoExport {
			flags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
	return c, flags
}

func (c *rawClient) request(typ, flags uint16, handle uint64, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := make([]byte, requestHeaderLen, requestHeaderLen+len(payload))
	binary.BigEndian.PutUint32(b[0:], magicRequest)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	c.write(append(b, payload...))
}

// chunk is one structured reply chunk, or a simple reply (simple set).
type chunk struct {
	simple  bool
	handle  uint64
	errno   Errno  // simple reply error, or error chunk's error
	flags   uint16 // chunk flags
	typ     uint16
	payload []byte
}

// reply reads one simple reply or structured chunk. For a simple reply to
// a READ, dataLen bytes of data follow a zero error; pass it when known.
func (c *rawClient) reply(dataLen int) chunk {
	c.t.Helper()
	var m [4]byte
	c.readFull(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimpleReply:
		var h [12]byte
		c.readFull(h[:])
		ch := chunk{simple: true, errno: Errno(binary.BigEndian.Uint32(h[0:])), handle: binary.BigEndian.Uint64(h[4:])}
		if ch.errno == 0 && dataLen > 0 {
			ch.payload = make([]byte, dataLen)
			c.readFull(ch.payload)
		}
		return ch
	case magicStructReply:
		var h [16]byte
		c.readFull(h[:])
		ch := chunk{
			flags:  binary.BigEndian.Uint16(h[0:]),
			typ:    binary.BigEndian.Uint16(h[2:]),
			handle: binary.BigEndian.Uint64(h[4:]),
		}
		n := binary.BigEndian.Uint32(h[12:])
		if n > MaxRequestLength+64 {
			c.t.Fatalf("chunk length %d", n)
		}
		ch.payload = make([]byte, n)
		c.readFull(ch.payload)
		if ch.typ&(1<<15) != 0 {
			if n < 6 {
				c.t.Fatalf("error chunk of %d bytes", n)
			}
			ch.errno = Errno(binary.BigEndian.Uint32(ch.payload))
			if ml := binary.BigEndian.Uint16(ch.payload[4:]); int(ml) > int(n)-6 {
				c.t.Fatalf("error message length %d in a %d-byte chunk", ml, n)
			}
		}
		return ch
	default:
		c.t.Fatalf("reply magic % x", m)
	}
	panic("unreachable")
}

// readStructured reads the chunks of one structured READ reply for
// [off, off+length) and reassembles the data, checking the chunks'
// bounds. It returns the data, the chunk types seen, and the error.
func (c *rawClient) readStructured(handle uint64, off uint64, length int) ([]byte, []uint16, Errno) {
	c.t.Helper()
	data := make([]byte, length)
	covered := 0
	var types []uint16
	var errno Errno
	for {
		ch := c.reply(0)
		if ch.simple {
			c.t.Fatalf("simple reply to a structured READ")
		}
		if ch.handle != handle {
			c.t.Fatalf("chunk for handle %d, want %d", ch.handle, handle)
		}
		types = append(types, ch.typ)
		switch ch.typ {
		case replyTypeOffsetData:
			o := binary.BigEndian.Uint64(ch.payload)
			d := ch.payload[8:]
			if len(d) == 0 || o < off || o+uint64(len(d)) > off+uint64(length) {
				c.t.Fatalf("data chunk [%d, +%d) outside request [%d, +%d)", o, len(d), off, length)
			}
			copy(data[o-off:], d)
			covered += len(d)
		case replyTypeOffsetHole:
			if len(ch.payload) != 12 {
				c.t.Fatalf("hole chunk of %d bytes", len(ch.payload))
			}
			o := binary.BigEndian.Uint64(ch.payload)
			n := binary.BigEndian.Uint32(ch.payload[8:])
			if n == 0 || o < off || o+uint64(n) > off+uint64(length) {
				c.t.Fatalf("hole chunk [%d, +%d) outside request [%d, +%d)", o, n, off, length)
			}
			clear(data[o-off : o-off+uint64(n)])
			covered += int(n)
		case replyTypeError:
			errno = ch.errno
		case replyTypeNone:
			if len(ch.payload) != 0 {
				c.t.Fatalf("NONE chunk with payload")
			}
		default:
			c.t.Fatalf("unexpected chunk type %d", ch.typ)
		}
		if ch.flags&replyFlagDone != 0 {
			break
		}
	}
	if errno == 0 && covered != length {
		c.t.Fatalf("chunks cover %d bytes of %d", covered, length)
	}
	return data, types, errno
}

// read sends a READ without flags and reads its structured reply.
func (c *rawClient) read(handle uint64, off uint64, length int) ([]byte, []uint16, Errno) {
	c.t.Helper()
	c.request(cmdRead, 0, handle, off, uint32(length), nil)
	return c.readStructured(handle, off, length)
}
