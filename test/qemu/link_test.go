package qemu_test

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// link is a unix-socket proxy in front of an NBD server that behaves
// like a network: each direction delivers what it forwards latency
// after it was sent, paced to bandwidth bytes per second. It counts the
// bytes the server sent (replies with their headers, handshakes).
type link struct {
	l         net.Listener
	target    string
	latency   time.Duration
	bandwidth int64
	down      atomic.Int64 // server to client
}

// startLink listens on sock and forwards every connection to the unix
// socket target until the test ends.
func startLink(t *testing.T, sock, target string, latency time.Duration, bandwidth int64) *link {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	k := &link{l: l, target: target, latency: latency, bandwidth: bandwidth}
	t.Cleanup(func() { l.Close() })
	go k.accept()
	return k
}

func (k *link) accept() {
	for {
		c, err := k.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("unix", k.target)
		if err != nil {
			c.Close()
			continue
		}
		go k.pipe(c, s, &k.down)
		go k.pipe(s, c, nil)
	}
}

// chunk is what one read from a side returned, and when.
type chunk struct {
	b  []byte
	at time.Time
}

// pipe forwards src to dst with the link's latency and bandwidth until
// either side fails, then closes both.
func (k *link) pipe(dst, src net.Conn, count *atomic.Int64) {
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 64<<10)
			n, err := src.Read(b)
			if n > 0 {
				q <- chunk{b[:n], time.Now()}
			}
			if err != nil {
				return
			}
		}
	}()
	var due time.Time // when the link is free again
	for c := range q {
		time.Sleep(time.Until(c.at.Add(k.latency)))
		if k.bandwidth > 0 {
			due = later(due, time.Now()).Add(time.Duration(int64(len(c.b)) * int64(time.Second) / k.bandwidth))
			time.Sleep(time.Until(due))
		}
		if _, err := dst.Write(c.b); err != nil {
			break
		}
		if count != nil {
			count.Add(int64(len(c.b)))
		}
	}
	dst.Close()
	src.Close()
	for range q { // let the reader finish
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
