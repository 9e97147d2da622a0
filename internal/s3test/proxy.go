package s3test

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
)

// Proxy is a loopback HTTP proxy in front of a Server that counts the
// GET requests going through it: what the store was asked, counted
// where it arrives. It keeps the client's Host header, so SigV4
// signatures made for the proxy's address still verify.
type Proxy struct {
	Endpoint string // http://127.0.0.1:PORT

	mu     sync.Mutex
	gets   int
	ranged map[string]int // "KEY bytes=A-B" -> GETs
}

// StartProxy runs a Proxy in front of s until the test ends.
func StartProxy(t testing.TB, s *Server) *Proxy {
	t.Helper()
	target, err := url.Parse(s.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ranged: map[string]int{}}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host // signed by the client
	}, ErrorLog: log.New(io.Discard, "", 0)} // a dead store is a 502, on purpose
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			p.mu.Lock()
			p.gets++
			if rg := r.Header.Get("Range"); rg != "" {
				p.ranged[r.URL.Path+" "+rg]++
			}
			p.mu.Unlock()
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	p.Endpoint = "http://" + l.Addr().String()
	return p
}

// GETs counts the GET requests so far.
func (p *Proxy) GETs() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gets
}

// Ranged returns how many times each ranged GET ("PATH bytes=A-B") was
// made so far.
func (p *Proxy) Ranged() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.ranged))
	for k, v := range p.ranged {
		out[k] = v
	}
	return out
}
