package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestReadWriteRoundTrip(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprint("structured=", structured), func(t *testing.T) {
			mem := newMemBackend(1 << 20)
			_, sock := startServer(t, Export{Name: "d", Backend: mem})
			c, _ := connect(t, sock, "d", structured)
			// Unaligned write spanning pages, then reads that cover data
			// and holes.
			pat := bytes.Repeat([]byte{0x33}, 3000)
			c.request(cmdWrite, 0, 1, 1000, 3000, pat)
			if r := c.reply(0); r.errno != 0 || r.handle != 1 {
				t.Fatalf("write: %+v", r)
			}
			want := make([]byte, 3*memPage)
			copy(want[1000:], pat)
			var got []byte
			if structured {
				var types []uint16
				var errno Errno
				got, types, errno = c.read(2, 0, len(want))
				if errno != 0 {
					t.Fatalf("read: %v", errno)
				}
				// Page 0 holds data; pages 1 and 2 are holes after 4000.
				if len(types) != 2 || types[0] != replyTypeOffsetData || types[1] != replyTypeOffsetHole {
					t.Errorf("chunk types %v, want data then hole", types)
				}
			} else {
				c.request(cmdRead, 0, 2, 0, uint32(len(want)), nil)
				got = c.reply(len(want)).payload
			}
			if !bytes.Equal(got, want) {
				t.Fatal("read back differs")
			}
			// The backend holds exactly what was written.
			back := make([]byte, len(want))
			mem.ReadAt(back, 0)
			if !bytes.Equal(back, want) {
				t.Fatal("backend differs")
			}
		})
	}
}

func TestStructuredReadChunks(t *testing.T) {
	for _, sparse := range []bool{false, true} {
		t.Run(fmt.Sprint("SparseReader=", sparse), func(t *testing.T) {
			mem := newMemBackend(1 << 20)
			var b Backend = mem
			if sparse {
				b = sparseMemBackend{mem}
			}
			_, sock := startServer(t, Export{Name: "d", Backend: b})
			c, flags := connect(t, sock, "d", true)
			if flags&tflagSendDF == 0 {
				t.Fatal("no SEND_DF")
			}
			mem.WriteAt(bytes.Repeat([]byte{7}, memPage), 2*memPage)

			// All hole: one OFFSET_HOLE chunk.
			_, types, _ := c.read(1, 0, 2*memPage)
			if len(types) != 1 || types[0] != replyTypeOffsetHole {
				t.Errorf("hole read: chunk types %v", types)
			}
			// Hole, data, hole with an unaligned start and end.
			got, types, _ := c.read(2, 100, 3*memPage)
			want := make([]byte, 3*memPage)
			copy(want[2*memPage-100:], bytes.Repeat([]byte{7}, memPage))
			if !bytes.Equal(got, want) {
				t.Error("mixed read differs")
			}
			if len(types) != 3 {
				t.Errorf("mixed read: chunk types %v", types)
			}
			// DF: exactly one data chunk with the zeros inline.
			c.request(cmdRead, cmdFlagDF, 3, 0, 4*memPage, nil)
			r := c.reply(0)
			if r.typ != replyTypeOffsetData || r.flags&replyFlagDone == 0 || len(r.payload) != 8+4*memPage {
				t.Fatalf("DF read: type %d flags %d len %d", r.typ, r.flags, len(r.payload))
			}
			// Zero-length read: a lone NONE chunk.
			_, types, errno := c.read(4, 0, 0)
			if errno != 0 || len(types) != 1 || types[0] != replyTypeNone {
				t.Errorf("zero-length read: %v %v", types, errno)
			}
		})
	}
}

func TestManyRunsReadAsOneChunk(t *testing.T) {
	mem := newMemBackend(4 << 20)
	_, sock := startServer(t, Export{Name: "d", Backend: mem})
	c, _ := connect(t, sock, "d", true)
	for pg := int64(0); pg < 1024; pg += 2 {
		mem.WriteAt([]byte{byte(pg)}, pg*memPage)
	}
	got, types, _ := c.read(1, 0, 4<<20)
	if len(types) != 1 {
		t.Errorf("%d chunks for 1024 alternating runs, want 1", len(types))
	}
	want := make([]byte, 4<<20)
	mem.ReadAt(want, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("data differs")
	}
}

type errCase struct {
	export string
	typ    uint16
	flags  uint16
	off    uint64
	length uint32
	want   Errno
}

func TestErrorCodes(t *testing.T) {
	const size = 1 << 20
	exports := []Export{
		{Name: "rw", Backend: newMemBackend(size)},
		{Name: "ro", Backend: newMemBackend(size), ReadOnly: true},
	}
	_, sock := startServer(t, exports...)
	for _, structured := range []bool{false, true} {
		cases := []errCase{
			{"rw", cmdRead, 0, size - 512, 1024, EINVAL},
			{"rw", cmdRead, 0, 1 << 62, 512, EINVAL},
			{"rw", cmdRead, 0, 0, 64 << 20, EINVAL},
			{"rw", cmdRead, 0, size, 0, 0},
			{"rw", cmdRead, 0, 0, 0, 0},
			{"rw", cmdRead, 1 << 9, 0, 512, EINVAL}, // unknown flag
			{"rw", cmdRead, cmdFlagFUA, 0, 512, 0},  // FUA is accepted everywhere
			{"rw", cmdWrite, 0, size - 512, 1024, ENOSPC},
			{"rw", cmdWrite, cmdFlagDF, 0, 512, EINVAL}, // DF is READ-only
			{"rw", cmdWrite, 0, 0, 0, 0},
			{"rw", cmdWriteZeroes, 0, size, 1, ENOSPC},
			{"rw", cmdWriteZeroes, cmdFlagNoHole | cmdFlagFastZero | cmdFlagFUA, 0, 4096, 0},
			{"rw", cmdWriteZeroes, cmdFlagReqOne, 0, 4096, EINVAL},
			{"rw", cmdTrim, 0, size - 1, 2, EINVAL},
			{"rw", cmdTrim, 0, 1000, 3000, 0},
			{"rw", cmdTrim, 0, 0, 0, 0},
			{"rw", cmdCache, 0, 0, 4096, 0},
			{"rw", cmdCache, 0, size, 4096, EINVAL},
			{"rw", cmdFlush, 0, 0, 0, 0},
			{"rw", 42, 0, 0, 0, EINVAL},
			{"ro", cmdWrite, 0, 0, 512, EPERM},
			{"ro", cmdWriteZeroes, 0, 0, 512, EPERM},
			{"ro", cmdTrim, 0, 0, 512, EPERM},
			{"ro", cmdRead, 0, 0, 512, 0},
			{"ro", cmdFlush, 0, 0, 0, 0},
		}
		if structured {
			cases = append(cases,
				errCase{"rw", cmdBlockStatus, 0, size - 512, 1024, EINVAL},
				errCase{"rw", cmdBlockStatus, 0, 0, 0, EINVAL})
		} else {
			cases = append(cases, errCase{"rw", cmdRead, cmdFlagDF, 0, 512, EINVAL})
		}
		conns := map[string]*rawClient{}
		for _, e := range []string{"rw", "ro"} {
			conns[e], _ = connect(t, sock, e, structured)
		}
		for i, tc := range cases {
			c := conns[tc.export]
			var payload []byte
			if tc.typ == cmdWrite {
				payload = make([]byte, tc.length)
			}
			h := uint64(i + 1)
			c.request(tc.typ, tc.flags, h, tc.off, tc.length, payload)
			var got Errno
			if structured && tc.typ == cmdRead {
				_, _, got = c.readStructured(h, tc.off, int(tc.length))
			} else {
				dataLen := 0
				if tc.typ == cmdRead {
					dataLen = int(tc.length)
				}
				r := c.reply(dataLen)
				if r.handle != h {
					t.Fatalf("reply handle %d, want %d", r.handle, h)
				}
				if r.simple && r.errno != 0 && structured {
					// Allowed, but this server always explains errors.
					t.Errorf("case %d: error as a simple reply", i)
				}
				got = r.errno
			}
			if got != tc.want {
				t.Errorf("structured=%v %s cmd %d flags %#x [%d,+%d): errno %d, want %d", structured, tc.export, tc.typ, tc.flags, tc.off, tc.length, got, tc.want)
			}
		}
	}
}

func TestOversizedWriteIsConsumed(t *testing.T) {
	mem := newMemBackend(1 << 30)
	_, sock := startServer(t, Export{Name: "d", Backend: mem})
	c, _ := connect(t, sock, "d", true)
	// 64 MiB of payload over the limit: the server must read and drop it,
	// answer EINVAL, and keep the connection.
	big := bytes.Repeat([]byte{0xee}, 64<<20)
	go func() {
		c.request(cmdWrite, 0, 1, 0, uint32(len(big)), big)
	}()
	if r := c.reply(0); r.handle != 1 || r.errno != EINVAL {
		t.Fatalf("oversized write: %+v", r)
	}
	c.request(cmdWrite, 0, 2, 4096, 5, []byte("hello"))
	if r := c.reply(0); r.handle != 2 || r.errno != 0 {
		t.Fatalf("write after oversized write: %+v", r)
	}
	got, _, _ := c.read(3, 4096, 5)
	if string(got) != "hello" {
		t.Fatalf("read back %q", got)
	}
	if len(mem.pages) != 1 {
		t.Fatalf("backend has %d pages; the oversized write reached it", len(mem.pages))
	}
}

func TestBlockStatus(t *testing.T) {
	mem := newMemBackend(1 << 20)
	_, sock := startServer(t, Export{Name: "d", Backend: mem})
	c, _ := connect(t, sock, "d", true)
	// Pages: 0 hole, 1-2 data, 3 hole, 4 data, rest hole.
	mem.WriteAt(make([]byte, 2*memPage), memPage)
	mem.WriteAt([]byte{1}, 4*memPage)

	type ext struct{ length, flags uint32 }
	status := func(h uint64, flags uint16, off uint64, length uint32) []ext {
		c.request(cmdBlockStatus, flags, h, off, length, nil)
		r := c.reply(0)
		if r.typ != replyTypeBlockStatus || r.flags&replyFlagDone == 0 || r.handle != h {
			t.Fatalf("block status reply: %+v", r)
		}
		if (len(r.payload)-4)%8 != 0 || len(r.payload) < 12 {
			t.Fatalf("block status payload of %d bytes", len(r.payload))
		}
		if id := binary.BigEndian.Uint32(r.payload); id != blockStatusCtxID {
			t.Fatalf("context id %d", id)
		}
		var out []ext
		for p := r.payload[4:]; len(p) > 0; p = p[8:] {
			out = append(out, ext{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
		return out
	}
	got := status(1, 0, 0, 6*memPage+100)
	want := []ext{{memPage, 3}, {2 * memPage, 0}, {memPage, 3}, {memPage, 0}, {memPage + 100, 3}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("extents %v, want %v (merged, last clipped)", got, want)
	}
	got = status(2, cmdFlagReqOne, 100, 10*memPage)
	if fmt.Sprint(got) != fmt.Sprint([]ext{{memPage - 100, 3}}) {
		t.Errorf("REQ_ONE: %v", got)
	}
	got = status(3, cmdFlagReqOne, memPage, 100)
	if fmt.Sprint(got) != fmt.Sprint([]ext{{100, 0}}) {
		t.Errorf("REQ_ONE clipped to the request: %v", got)
	}
	// Many alternating runs: capped, never more than the request.
	for pg := int64(0); pg < 256; pg += 2 {
		mem.WriteAt([]byte{1}, pg*memPage)
	}
	got = status(4, 0, 0, 1<<20)
	var model []ext // the page map, merged
	for pg := int64(0); pg < 256; pg++ {
		flags := uint32(3)
		if mem.pages[pg] != nil {
			flags = 0
		}
		if k := len(model); k > 0 && model[k-1].flags == flags {
			model[k-1].length += memPage
		} else {
			model = append(model, ext{memPage, flags})
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(model) {
		t.Errorf("alternating: %d extents %v, want %v", len(got), got, model)
	}
}

func TestTrimAndZeroMakeHoles(t *testing.T) {
	mem := newMemBackend(1 << 20)
	_, sock := startServer(t, Export{Name: "d", Backend: mem})
	c, _ := connect(t, sock, "d", true)
	c.request(cmdWrite, 0, 1, 0, 4*memPage, bytes.Repeat([]byte{9}, 4*memPage))
	c.reply(0)
	// Unaligned trim: the whole page in the middle goes, the partial
	// pages read as zeros.
	c.request(cmdTrim, 0, 2, 1000, 2*memPage, nil)
	c.reply(0)
	c.request(cmdWriteZeroes, cmdFlagNoHole, 3, 3*memPage, memPage, nil)
	c.reply(0)
	got, _, _ := c.read(4, 0, 4*memPage)
	want := bytes.Repeat([]byte{9}, 4*memPage)
	clear(want[1000 : 1000+2*memPage])
	clear(want[3*memPage:])
	if !bytes.Equal(got, want) {
		t.Fatal("contents after trim and zero differ")
	}
	if mem.pages[1] != nil || mem.pages[3] != nil || mem.pages[0] == nil {
		t.Fatal("trim/zero did not deallocate whole pages")
	}
}

func TestFUAFlushes(t *testing.T) {
	mem := newMemBackend(1 << 20)
	_, sock := startServer(t, Export{Name: "d", Backend: mem})
	c, _ := connect(t, sock, "d", true)
	steps := []struct {
		typ, flags uint16
		flushes    int64
	}{
		{cmdWrite, 0, 0},
		{cmdWrite, cmdFlagFUA, 1},
		{cmdTrim, cmdFlagFUA, 2},
		{cmdWriteZeroes, cmdFlagFUA, 3},
		{cmdWriteZeroes, 0, 3},
		{cmdFlush, 0, 4},
		{cmdRead, cmdFlagFUA, 4},
	}
	for i, s := range steps {
		var payload []byte
		if s.typ == cmdWrite {
			payload = make([]byte, 512)
		}
		c.request(s.typ, s.flags, uint64(i), 0, 512, payload)
		if s.typ == cmdRead {
			c.readStructured(uint64(i), 0, 512)
		} else if r := c.reply(0); r.errno != 0 {
			t.Fatalf("step %d: %v", i, r.errno)
		}
		if got := mem.flushes.Load(); got != s.flushes {
			t.Fatalf("step %d: %d flushes, want %d", i, got, s.flushes)
		}
	}
}

// gateBackend blocks ReadAt at gateOff until released, and counts the
// reads inside ReadAt.
type gateBackend struct {
	*memBackend
	gateOff int64
	release chan struct{}
	entered chan struct{}
}

func (g *gateBackend) ReadAt(p []byte, off int64) (int, error) {
	if off == g.gateOff {
		g.entered <- struct{}{}
		<-g.release
	}
	return g.memBackend.ReadAt(p, off)
}

func TestOutOfOrderReplies(t *testing.T) {
	g := &gateBackend{memBackend: newMemBackend(1 << 20), gateOff: 8192, release: make(chan struct{}), entered: make(chan struct{}, 1)}
	_, sock := startWorkerServer(t, Export{Name: "d", Backend: g})
	// Registered after the server's: runs before its Shutdown, so a
	// failure below cannot leave read 1 stuck and Shutdown waiting for it.
	var release sync.Once
	open := func() { release.Do(func() { close(g.release) }) }
	t.Cleanup(open)
	c, _ := connect(t, sock, "d", false)
	c.request(cmdRead, 0, 1, 8192, 512, nil)
	<-g.entered
	// While read 1 is stuck, a write and then a read on the same
	// connection complete and are answered first. The read is sent once
	// the write is answered: two requests in flight together may run in
	// either order (under load, a CI run had the read's reply first).
	c.request(cmdWrite, 0, 2, 0, 3, []byte("abc"))
	if r := c.reply(0); r.handle != 2 || r.errno != 0 {
		t.Fatalf("first reply: %+v", r)
	}
	c.request(cmdRead, 0, 3, 0, 3, nil)
	if r := c.reply(3); r.handle != 3 || string(r.payload) != "abc" {
		t.Fatalf("second reply: %+v", r)
	}
	open()
	if r := c.reply(512); r.handle != 1 || r.errno != 0 {
		t.Fatalf("third reply: %+v", r)
	}
}

// barrierBackend makes every ReadAt wait until n reads are inside ReadAt
// at once: it proves n requests run concurrently on one connection.
type barrierBackend struct {
	*memBackend
	mu      sync.Mutex
	n, in   int
	allHere chan struct{}
}

func (b *barrierBackend) ReadAt(p []byte, off int64) (int, error) {
	b.mu.Lock()
	b.in++
	if b.in == b.n {
		close(b.allHere)
	}
	b.mu.Unlock()
	<-b.allHere
	return b.memBackend.ReadAt(p, off)
}

func TestSixteenInFlight(t *testing.T) {
	b := &barrierBackend{memBackend: newMemBackend(1 << 20), n: 16, allHere: make(chan struct{})}
	_, sock := startWorkerServer(t, Export{Name: "d", Backend: b})
	c, _ := connect(t, sock, "d", false)
	for i := range 16 {
		c.request(cmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
	}
	seen := map[uint64]bool{}
	for range 16 {
		r := c.reply(4096)
		if r.errno != 0 || seen[r.handle] {
			t.Fatalf("reply %+v", r)
		}
		seen[r.handle] = true
	}
}

func TestDisconnectFinishesWorkAndFlushes(t *testing.T) {
	g := &gateBackend{memBackend: newMemBackend(1 << 20), gateOff: 0, release: make(chan struct{}), entered: make(chan struct{}, 1)}
	g.memBackend.WriteAt([]byte{1}, 0) // data, so that the read reaches ReadAt
	_, sock := startWorkerServer(t, Export{Name: "d", Backend: g})
	c, _ := connect(t, sock, "d", true)
	c.request(cmdRead, 0, 1, 0, 512, nil)
	<-g.entered
	c.request(cmdWrite, 0, 2, 4096, 4, []byte("data"))
	c.request(cmdDisc, 0, 3, 0, 0, nil)
	close(g.release)
	// Both replies arrive before the server closes.
	seen := map[uint64]bool{}
	for range 2 {
		ch := c.reply(0)
		if ch.errno != 0 {
			t.Fatalf("reply %+v", ch)
		}
		seen[ch.handle] = true
	}
	if !seen[1] || !seen[2] {
		t.Fatalf("replies for %v", seen)
	}
	c.expectEOF()
	if g.flushes.Load() != 1 {
		t.Fatalf("%d flushes after DISC, want 1", g.flushes.Load())
	}
	got := make([]byte, 4)
	g.memBackend.ReadAt(got, 4096)
	if string(got) != "data" {
		t.Fatalf("backend holds %q", got)
	}
}

func TestShutdownFinishesInFlight(t *testing.T) {
	g := &gateBackend{memBackend: newMemBackend(1 << 20), gateOff: 0, release: make(chan struct{}), entered: make(chan struct{}, 1)}
	s, err := NewServer(Export{Name: "d", Backend: g})
	if err != nil {
		t.Fatal(err)
	}
	s.inlineLimit = 0
	client, server := net.Pipe()
	served := make(chan struct{})
	go func() { s.ServeConn(server); close(served) }()
	client.SetDeadline(time.Now().Add(60 * time.Second))
	c := &rawClient{t: t, nc: client, br: bufio.NewReader(client)}
	var greet [18]byte
	c.readFull(greet[:])
	c.u32(flagFixedNewstyle | flagNoZeroes)
	c.option(optGo, infoData("d"))
	for r := c.optReply(); r.typ != repAck; r = c.optReply() {
	}
	c.request(cmdRead, 0, 1, 0, 512, nil)
	<-g.entered
	shut := make(chan error)
	go func() { shut <- s.Shutdown(context.Background()) }()
	// The reply still comes, then the connection closes.
	close(g.release)
	if r := c.reply(512); r.handle != 1 || r.errno != 0 {
		t.Fatalf("in-flight reply: %+v", r)
	}
	c.expectEOF()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	<-served
	if g.flushes.Load() != 1 {
		t.Fatalf("%d flushes after Shutdown, want 1", g.flushes.Load())
	}
	// New connections are refused.
	a, b := net.Pipe()
	go s.ServeConn(b)
	if _, err := a.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection after Shutdown was served")
	}
}

// errBackend fails reads, writes and (while failFlush is set) flushes
// with err.
type errBackend struct {
	*memBackend
	err       error
	failFlush *atomic.Bool
}

func (e errBackend) ReadAt(p []byte, off int64) (int, error)  { return 0, e.err }
func (e errBackend) WriteAt(p []byte, off int64) (int, error) { return 0, e.err }
func (e errBackend) Flush() error {
	if e.failFlush.Load() {
		return e.err
	}
	return nil
}

func TestBackendErrorMapping(t *testing.T) {
	cases := []struct {
		err  error
		want Errno
	}{
		{errors.New("disk on fire"), EIO},
		{fmt.Errorf("write: %w: quota", ENOSPC), ENOSPC},
		{fmt.Errorf("layer: %w", syscall.EDQUOT), ENOSPC},
		{fmt.Errorf("layer: %w", syscall.EROFS), EPERM},
		{fmt.Errorf("%w", EINVAL), EINVAL},
	}
	for _, tc := range cases {
		b := errBackend{newMemBackend(1 << 20), tc.err, new(atomic.Bool)}
		b.failFlush.Store(true)
		s, sock := startServer(t, Export{Name: "d", Backend: b})
		c, _ := connect(t, sock, "d", true)
		c.request(cmdWrite, 0, 1, 0, 3, []byte("abc"))
		if r := c.reply(0); r.errno != tc.want || len(r.payload) <= 6 {
			t.Errorf("%v: write errno %d, want %d with a message", tc.err, r.errno, tc.want)
		}
		c.request(cmdRead, cmdFlagDF, 2, 0, 512, nil)
		if _, _, errno := c.readStructured(2, 0, 512); errno != tc.want {
			t.Errorf("%v: read errno %d, want %d", tc.err, errno, tc.want)
		}
		c.request(cmdFlush, 0, 3, 0, 0, nil)
		if r := c.reply(0); r.errno != tc.want {
			t.Errorf("%v: flush errno %d, want %d", tc.err, r.errno, tc.want)
		}
		// Shutdown reports the export's flush failure.
		c.request(cmdDisc, 0, 4, 0, 0, nil)
		c.expectEOF()
		if err := s.Shutdown(context.Background()); !errors.Is(err, tc.err) {
			t.Errorf("Shutdown: %v, want %v", err, tc.err)
		}
		b.failFlush.Store(false)
	}
}

func TestMultipleConnectionsShareData(t *testing.T) {
	mem := newMemBackend(4 << 20)
	_, sock := startServer(t, Export{Name: "d", Backend: mem, MultiConn: true})
	var wg sync.WaitGroup
	for i := range 4 {
		c, flags := connect(t, sock, "d", i%2 == 0)
		if flags&tflagCanMultiConn == 0 {
			t.Fatal("no CAN_MULTI_CONN")
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 32 {
				off := uint64(i)<<20 + uint64(j)*32768
				c.request(cmdWrite, 0, uint64(j), off, 32768, bytes.Repeat([]byte{byte(i + 1)}, 32768))
			}
			for range 32 {
				if r := c.reply(0); r.errno != 0 {
					t.Errorf("conn %d: %v", i, r.errno)
				}
			}
		}()
	}
	wg.Wait()
	c, _ := connect(t, sock, "d", false)
	for i := range 4 {
		c.request(cmdRead, 0, 1, uint64(i)<<20, 1<<20, nil)
		if r := c.reply(1 << 20); !bytes.Equal(r.payload, bytes.Repeat([]byte{byte(i + 1)}, 1<<20)) {
			t.Fatalf("range %d differs", i)
		}
	}
}

func TestInlineExecutionAdapts(t *testing.T) {
	s, err := NewServer(Export{Name: "d", Backend: newMemBackend(1 << 20)})
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := newConn(s, a)
	read := &request{typ: cmdRead, length: 4096}
	fuaWrite := &request{typ: cmdWrite, flags: cmdFlagFUA, length: 4096}
	flush := &request{typ: cmdFlush}
	refused := &request{typ: cmdFlush, errno: EINVAL}
	if !c.inlineOK(read) || c.inlineOK(fuaWrite) || c.inlineOK(flush) || !c.inlineOK(refused) {
		t.Fatal("fast backend: want reads inline, FUA writes and flushes on workers, refusals inline")
	}
	for range 64 {
		c.observe(10 * inlineMaxLatency)
	}
	if c.inlineOK(read) {
		t.Fatal("slow backend: reads still run inline")
	}
	for range 64 {
		c.observe(inlineMaxLatency / 100)
	}
	if !c.inlineOK(read) {
		t.Fatal("backend fast again: reads do not run inline")
	}
}

// TestPipelinedLargeReads: large READs sent back to back, executed by
// the reader inline, are answered by the connection's sender goroutine
// (conn.sendBehind) while the reader goes on; every reply arrives whole,
// with its own data, and the connection then ends cleanly.
func TestPipelinedLargeReads(t *testing.T) {
	const n, size = 48, 64 << 10
	mem := newMemBackend(n * size)
	for i := range n {
		mem.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, size), int64(i)*size)
	}
	_, sock := startServer(t, Export{Name: "d", Backend: mem})
	c, _ := connect(t, sock, "d", true)
	var reqs []byte
	for i := range n { // one write: the server finds them all buffered
		b := make([]byte, requestHeaderLen)
		binary.BigEndian.PutUint32(b[0:], magicRequest)
		binary.BigEndian.PutUint16(b[6:], cmdRead)
		binary.BigEndian.PutUint64(b[8:], uint64(i))
		binary.BigEndian.PutUint64(b[16:], uint64(i)*size)
		binary.BigEndian.PutUint32(b[24:], size)
		reqs = append(reqs, b...)
	}
	c.write(reqs)
	seen := map[uint64]bool{}
	for range n {
		ch := c.reply(0)
		if ch.typ != replyTypeOffsetData || ch.flags&replyFlagDone == 0 || seen[ch.handle] || ch.handle >= n {
			t.Fatalf("reply %d: type %d flags %#x (seen before: %v)", ch.handle, ch.typ, ch.flags, seen[ch.handle])
		}
		seen[ch.handle] = true
		if o := binary.BigEndian.Uint64(ch.payload); o != ch.handle*size || !bytes.Equal(ch.payload[8:], bytes.Repeat([]byte{byte(ch.handle + 1)}, size)) {
			t.Fatalf("reply %d: offset %d or data not the request's", ch.handle, o)
		}
	}
	c.request(cmdDisc, 0, 0, 0, 0, nil)
	c.expectEOF()
}
