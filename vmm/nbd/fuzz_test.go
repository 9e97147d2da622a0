package nbd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The fuzz targets play an arbitrary client: the input is written to the
// server, the client half-closes, and the server must finish the session
// without panicking or hanging, whatever it read (its replies are
// drained). Allocation from length fields is bounded by the server's
// limits; a violation shows as the fuzzer running out of memory.

var (
	fuzzServerOnce sync.Once
	fuzzServer     *Server
	// fuzzBackends are the fuzz server's backends; each records the
	// first call that breaks the Backend contract the server promises.
	fuzzBackends []*strictBackend
)

func fuzzTarget() *Server {
	fuzzServerOnce.Do(func() {
		fuzzBackends = []*strictBackend{
			{memBackend: newMemBackend(1 << 20)},
			{memBackend: newMemBackend(64 << 10), readOnly: true},
		}
		s, err := NewServer(
			Export{Name: "d", Backend: fuzzBackends[0]},
			Export{Name: "ro", Backend: fuzzBackends[1], ReadOnly: true},
		)
		if err != nil {
			panic(err)
		}
		fuzzServer = s
	})
	return fuzzServer
}

// strictBackend is a memBackend that records the first call outside what
// doc.go promises a Backend: ranges inside [0, Size()), no empty ranges,
// no writes to a read-only export.
type strictBackend struct {
	*memBackend
	readOnly  bool
	mu        sync.Mutex
	violation string
}

func (b *strictBackend) bad(format string, args ...any) {
	b.mu.Lock()
	if b.violation == "" {
		b.violation = fmt.Sprintf(format, args...)
	}
	b.mu.Unlock()
}

// take returns and clears the recorded violation.
func (b *strictBackend) take() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	v := b.violation
	b.violation = ""
	return v
}

func (b *strictBackend) checkRange(op string, off, n int64, write bool) {
	if off < 0 || n <= 0 || off+n > b.Size() || off+n < off {
		b.bad("%s called with off %d length %d on a %d-byte export", op, off, n, b.Size())
	}
	if write && b.readOnly {
		b.bad("%s called on a read-only export", op)
	}
}

func (b *strictBackend) ReadAt(p []byte, off int64) (int, error) {
	b.checkRange("ReadAt", off, int64(len(p)), false)
	return b.memBackend.ReadAt(p, off)
}

func (b *strictBackend) WriteAt(p []byte, off int64) (int, error) {
	b.checkRange("WriteAt", off, int64(len(p)), true)
	return b.memBackend.WriteAt(p, off)
}

func (b *strictBackend) Zero(off, length int64) error {
	b.checkRange("Zero", off, length, true)
	return b.memBackend.Zero(off, length)
}

func (b *strictBackend) BlockStatus(off, length int64, fn func(off, length int64, state uint32) bool) error {
	b.checkRange("BlockStatus", off, length, false)
	return b.memBackend.BlockStatus(off, length, fn)
}

// serveBytes runs one server session fed with input and returns what the
// server sent. It fails the test if the backend was called outside its
// contract.
func serveBytes(t *testing.T, input []byte) []byte {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	server, client := conns[0], conns[1].(*net.UnixConn)
	defer client.Close()
	done := make(chan struct{})
	srv := fuzzTarget()
	go func() {
		srv.ServeConn(server)
		close(done)
	}()
	var out bytes.Buffer
	drained := make(chan struct{})
	go func() {
		io.Copy(&out, client)
		close(drained)
	}()
	go func() {
		client.Write(input) // fails if the server hangs up first: fine
		client.CloseWrite()
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("server still serving 60s after the client's input ended (%d bytes)", len(input))
	}
	<-drained // ServeConn closed the connection
	for _, b := range fuzzBackends {
		if v := b.take(); v != "" {
			t.Fatalf("backend contract broken: %s", v)
		}
	}
	return out.Bytes()
}

func optionBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func requestBytes(typ, flags uint16, handle, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, magicRequest)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var clientFlagsBytes = []byte{0, 0, 0, flagFixedNewstyle | flagNoZeroes}

func FuzzHandshake(f *testing.F) {
	f.Add(cat(clientFlagsBytes, optionBytes(optGo, infoData("d", infoBlockSize, infoName))))
	f.Add(cat(clientFlagsBytes, optionBytes(optList, nil), optionBytes(optInfo, infoData("nope")), optionBytes(optAbort, nil)))
	f.Add(cat(clientFlagsBytes, optionBytes(optStructuredReply, nil),
		optionBytes(optListMetaContext, metaData("d")), optionBytes(optSetMetaContext, metaData("d", "base:allocation", "base:")),
		optionBytes(optGo, infoData("d"))))
	f.Add(cat([]byte{0, 0, 0, 1}, optionBytes(optExportName, []byte("ro")), requestBytes(cmdRead, 0, 1, 0, 512, nil)))
	f.Add(cat(clientFlagsBytes, optionBytes(77, make([]byte, 100)), optionBytes(optGo, []byte{0, 0, 0, 200})))
	f.Add(cat(clientFlagsBytes, binary.BigEndian.AppendUint64(nil, magicIHaveOpt), []byte{0, 0, 0, 7, 0x7f, 0xff, 0xff, 0xff}))
	f.Fuzz(func(t *testing.T, input []byte) {
		serveBytes(t, input)
	})
}

func FuzzRequests(f *testing.F) {
	f.Add(byte(1), requestBytes(cmdWrite, cmdFlagFUA, 1, 1000, 5, []byte("hello")))
	f.Add(byte(1), cat(requestBytes(cmdRead, 0, 1, 0, 8192, nil), requestBytes(cmdBlockStatus, cmdFlagReqOne, 2, 0, 1<<20, nil),
		requestBytes(cmdTrim, 0, 3, 100, 5000, nil), requestBytes(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFastZero, 4, 0, 4096, nil),
		requestBytes(cmdRead, cmdFlagDF, 5, 0, 4096, nil), requestBytes(cmdFlush, 0, 6, 0, 0, nil), requestBytes(cmdCache, 0, 7, 0, 4096, nil),
		requestBytes(cmdDisc, 0, 8, 0, 0, nil)))
	f.Add(byte(0), cat(requestBytes(cmdWrite, 0, 1, 0, 64<<20, make([]byte, 100)), requestBytes(cmdRead, 0, 2, 1<<40, 1, nil)))
	f.Add(byte(0), cat(requestBytes(99, 0xffff, 1, 0, 0, nil), requestBytes(cmdRead, 0, 2, 0, 0, nil), []byte{1, 2, 3}))
	f.Add(byte(2), requestBytes(cmdWrite, 0, 1, 0, 512, make([]byte, 512)))
	f.Fuzz(func(t *testing.T, mode byte, requests []byte) {
		// mode selects the negotiation: structured replies and
		// base:allocation or not, writable or read-only export.
		export := "d"
		if mode&2 != 0 {
			export = "ro"
		}
		hs := clientFlagsBytes
		if mode&1 != 0 {
			hs = cat(hs, optionBytes(optStructuredReply, nil), optionBytes(optSetMetaContext, metaData(export, baseAllocation)))
		}
		out := serveBytes(t, cat(hs, optionBytes(optGo, infoData(export)), requests))
		checkReplies(t, out, mode&1 != 0, requests)
	})
}

// sentRequest is one complete request of a fuzz input.
type sentRequest struct {
	typ    uint16
	length uint32
}

// parseRequests splits a request stream as the server must read it: it
// stops at a bad magic (the server disconnects), at DISC (nothing after
// it is read) and at a WRITE whose payload is cut off (never complete).
// ok is false when two requests share a handle, which leaves replies
// ambiguous.
func parseRequests(b []byte) (reqs map[uint64]sentRequest, ok bool) {
	reqs = map[uint64]sentRequest{}
	for len(b) >= 28 {
		if binary.BigEndian.Uint32(b) != magicRequest {
			break
		}
		typ := binary.BigEndian.Uint16(b[6:])
		handle := binary.BigEndian.Uint64(b[8:])
		length := binary.BigEndian.Uint32(b[24:])
		if typ == cmdDisc {
			break
		}
		b = b[28:]
		if typ == cmdWrite {
			if uint64(len(b)) < uint64(length) {
				break
			}
			b = b[length:]
		}
		if _, dup := reqs[handle]; dup {
			return nil, false
		}
		reqs[handle] = sentRequest{typ, length}
	}
	return reqs, true
}

// checkReplies is the oracle of FuzzRequests: after the handshake's
// replies, every complete request the input sent is answered exactly
// once (one simple reply, or structured chunks ending in one DONE), no
// reply names a handle that was not sent, and the replies parse to the
// end of the stream (it stayed in sync).
func checkReplies(t *testing.T, out []byte, structured bool, requests []byte) {
	want, ok := parseRequests(requests)
	if !ok {
		return
	}
	// Handshake: server greeting, then option replies up to the ACKs of
	// structured replies and SET_META_CONTEXT (when negotiated) and GO.
	if len(out) < 18 {
		t.Fatalf("server sent %d bytes, not even its greeting", len(out))
	}
	out = out[18:]
	acks := 1
	if structured {
		acks = 3
	}
	for acks > 0 {
		if len(out) < 20 || binary.BigEndian.Uint64(out) != magicOptReply {
			t.Fatalf("option replies end early or out of sync (%d bytes left)", len(out))
		}
		typ, n := binary.BigEndian.Uint32(out[12:]), binary.BigEndian.Uint32(out[16:])
		if typ&(1<<31) != 0 {
			t.Fatalf("option refused with %#x during a valid handshake", typ)
		}
		if uint32(len(out)-20) < n {
			t.Fatalf("option reply of %d bytes cut off", n)
		}
		out = out[20+n:]
		if typ == repAck {
			acks--
		}
	}
	answered := map[uint64]int{}
	for len(out) > 0 {
		if len(out) < 4 {
			t.Fatalf("%d stray bytes after the last reply", len(out))
		}
		switch binary.BigEndian.Uint32(out) {
		case magicSimpleReply:
			if len(out) < 16 {
				t.Fatalf("simple reply cut off")
			}
			errno, handle := binary.BigEndian.Uint32(out[4:]), binary.BigEndian.Uint64(out[8:])
			out = out[16:]
			r, sent := want[handle]
			if !sent {
				t.Fatalf("simple reply for handle %d, which was never sent", handle)
			}
			if errno == 0 && r.typ == cmdRead {
				if uint32(len(out)) < r.length {
					t.Fatalf("READ reply for handle %d cut off", handle)
				}
				out = out[r.length:]
			}
			answered[handle]++
		case magicStructReply:
			if len(out) < 20 {
				t.Fatalf("structured reply chunk cut off")
			}
			flags, handle, n := binary.BigEndian.Uint16(out[4:]), binary.BigEndian.Uint64(out[8:]), binary.BigEndian.Uint32(out[16:])
			if uint32(len(out)-20) < n {
				t.Fatalf("structured chunk for handle %d cut off", handle)
			}
			out = out[20+n:]
			if _, sent := want[handle]; !sent {
				t.Fatalf("structured reply for handle %d, which was never sent", handle)
			}
			if flags&replyFlagDone != 0 {
				answered[handle]++
			}
		default:
			t.Fatalf("reply stream out of sync: magic %#x", binary.BigEndian.Uint32(out))
		}
	}
	for h := range want {
		if answered[h] != 1 {
			t.Errorf("request with handle %d (type %d) answered %d times, want once", h, want[h].typ, answered[h])
		}
	}
}
