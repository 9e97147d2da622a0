package nbd

import (
	"encoding/binary"
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
)

func fuzzTarget(t *testing.T) *Server {
	fuzzServerOnce.Do(func() {
		s, err := NewServer(
			Export{Name: "d", Backend: newMemBackend(1 << 20)},
			Export{Name: "ro", Backend: newMemBackend(64 << 10), ReadOnly: true},
		)
		if err != nil {
			panic(err)
		}
		fuzzServer = s
	})
	return fuzzServer
}

// serveBytes runs one server session fed with input.
func serveBytes(t *testing.T, input []byte) {
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
	go func() {
		fuzzTarget(t).ServeConn(server)
		close(done)
	}()
	go io.Copy(io.Discard, client)
	go func() {
		client.Write(input) // fails if the server hangs up first: fine
		client.CloseWrite()
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("server still serving 60s after the client's input ended (%d bytes)", len(input))
	}
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
		serveBytes(t, cat(hs, optionBytes(optGo, infoData(export)), requests))
	})
}
