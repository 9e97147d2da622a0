package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// startTLSServer serves peerExports on 127.0.0.1 with the credentials in
// certs/server, configured further by configure; it returns the port.
func startTLSServer(t *testing.T, certs string, verifyPeer bool, configure func(*Server)) int {
	t.Helper()
	cfg, err := ServerTLS(filepath.Join(certs, "server"), verifyPeer)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewServer(peerExports()...)
	if err != nil {
		t.Fatal(err)
	}
	s.TLS = cfg
	configure(s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, s, l)
	return l.Addr().(*net.TCPAddr).Port
}

// makeCerts makes a CA with a server and n clients in a new directory.
func makeCerts(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if err := MakeCerts(dir, CertOptions{Clients: n}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// refusedTool runs a client that must fail, within a bound, and returns
// its output.
func refusedTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %q hung instead of being refused", name, args)
	}
	if err == nil {
		t.Fatalf("%s %q succeeded, want it refused:\n%s", name, args, out)
	}
	return string(out)
}

// TestTLSPeers: libnbd's and QEMU's TLS clients against a server that
// requires TLS and verifies client certificates, with an allow-list;
// and every way a client is refused.
func TestTLSPeers(t *testing.T) {
	testenv.RequireTools(t, peerPackages, "nbdinfo", "nbdcopy", "qemu-img", "qemu-io")
	certs := makeCerts(t, 2)
	port := startTLSServer(t, certs, true, func(s *Server) {
		s.TLSMode = TLSRequired
		s.Authorize = AllowSubjects([]string{"CN=client-1,*"})
	})
	client := filepath.Join(certs, "client-1")
	uri := func(export, creds string) string {
		return fmt.Sprintf("nbds://127.0.0.1:%d/%s?tls-certificates=%s", port, export, creds)
	}

	out := runTool(t, "nbdinfo", uri("disk", client))
	if !strings.Contains(out, fmt.Sprint(peerDiskSize)) || !strings.Contains(out, "with TLS") {
		t.Errorf("nbdinfo over TLS:\n%s", out)
	}
	object := "tls-creds-x509,id=tls0,endpoint=client,dir=" + client
	opts := fmt.Sprintf("driver=nbd,host=127.0.0.1,port=%d,export=disk,tls-creds=tls0", port)
	runTool(t, "qemu-io", "--object", object, "--image-opts", opts,
		"-c", "write -P 0x5c 1M 256k", "-c", "read -P 0x5c 1M 256k", "-c", "flush")
	if out := runTool(t, "qemu-img", "info", "--object", object, "--image-opts", opts); !strings.Contains(out, fmt.Sprintf("virtual size: %d MiB", peerDiskSize>>20)) {
		t.Errorf("qemu-img info over TLS:\n%s", out)
	}
	// qemu-io's whole battery over TLS.
	qemuIOBattery(t, []string{"--object", object, "--image-opts", opts})
	// nbdcopy in and out over TLS, compared by qemu-img over TLS too.
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := bytes.Repeat([]byte("hibdisk over tls "), 4<<20/17+1)
	if err := os.WriteFile(src, data[:4<<20], 0o644); err != nil {
		t.Fatal(err)
	}
	runTool(t, "qemu-img", "resize", "-f", "raw", src, fmt.Sprint(peerDiskSize))
	runTool(t, "nbdcopy", src, uri("copy", client))
	back := filepath.Join(dir, "back.img")
	runTool(t, "nbdcopy", uri("copy", client), back)
	runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, back)
	// qemu-img compare with the export itself over TLS.
	copyOpts := fmt.Sprintf("driver=nbd,host=127.0.0.1,port=%d,export=copy,tls-creds=tls0", port)
	runTool(t, "qemu-img", "compare", "--object", object, "--image-opts", copyOpts, "driver=file,filename="+src)

	// Refused, each with an error and not a hang:
	// a plaintext client (the server requires TLS);
	if out := refusedTool(t, "nbdinfo", fmt.Sprintf("nbd://127.0.0.1:%d/disk", port)); !strings.Contains(strings.ToLower(out), "tls") {
		t.Errorf("plaintext client: %s", out)
	}
	// a certificate the allow-list does not name (NBD_REP_ERR_POLICY);
	// (libnbd words NBD_REP_ERR_POLICY as "not supported";
	// TestTLSPolicyReply checks the reply itself)
	refusedTool(t, "nbdinfo", uri("disk", filepath.Join(certs, "client-2")))
	// a client of another CA (neither side trusts the other);
	other := makeCerts(t, 1)
	refusedTool(t, "nbdinfo", uri("disk", filepath.Join(other, "client-1")))
	// a client without a certificate.
	nocert := filepath.Join(dir, "nocert")
	if err := os.MkdirAll(nocert, 0o755); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(certs, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nocert, CACertFile), ca, 0o644); err != nil {
		t.Fatal(err)
	}
	refusedTool(t, "nbdinfo", uri("disk", nocert))
	// QEMU trusting another CA.
	refusedTool(t, "qemu-img", "info", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+filepath.Join(other, "client-1"), "--image-opts", opts)
}

// TestTLSOptional: with TLS optional, plaintext and TLS clients are both
// served, and a second STARTTLS is refused.
func TestTLSOptional(t *testing.T) {
	testenv.RequireTools(t, peerPackages, "nbdinfo")
	certs := makeCerts(t, 1)
	port := startTLSServer(t, certs, false, func(s *Server) { s.TLSMode = TLSOptional })
	if out := runTool(t, "nbdinfo", fmt.Sprintf("nbd://127.0.0.1:%d/disk", port)); strings.Contains(out, "with TLS") {
		t.Errorf("plaintext:\n%s", out)
	}
	if out := runTool(t, "nbdinfo", fmt.Sprintf("nbds://127.0.0.1:%d/disk?tls-certificates=%s", port, filepath.Join(certs, "client-1"))); !strings.Contains(out, "with TLS") {
		t.Errorf("TLS:\n%s", out)
	}
	// fio's nbd engine over TLS: it refuses libnbd's tls-certificates
	// parameter (local file access), so libnbd takes the CA from
	// $HOME/.pki/libnbd.
	testenv.RequireTools(t, "fio", "fio")
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".pki"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(certs, "client-1"), filepath.Join(home, ".pki", "libnbd")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("fio", "--name=tls", "--ioengine=nbd", fmt.Sprintf("--uri=nbds://127.0.0.1:%d/disk", port),
		"--rw=randrw", "--bs=4k", "--iodepth=8", "--size=16M", "--io_size=8M", "--verify=crc32c", "--do_verify=1")
	cmd.Env = append(os.Environ(), "HOME="+home)
	cmd.Dir = home // fio leaves its verify state file in the working directory
	if out, err := cmd.CombinedOutput(); err != nil || strings.Contains(string(out), "verify:") && strings.Contains(string(out), "bad") {
		t.Errorf("fio over TLS: %v\n%s", err, out)
	}
}

// TestTLSRequiredOptions: before STARTTLS a server that requires TLS
// answers options with NBD_REP_ERR_TLS_REQD, serves NBD_OPT_ABORT, and
// hangs up on NBD_OPT_EXPORT_NAME; without TLS configured, STARTTLS is
// unsupported.
func TestTLSRequiredOptions(t *testing.T) {
	certs := makeCerts(t, 0)
	port := startTLSServer(t, certs, false, func(s *Server) { s.TLSMode = TLSRequired })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c := dialTCP(t, addr)
	c.u32(flagFixedNewstyle | flagNoZeroes)
	for _, opt := range []uint32{optList, optGo, optInfo, optStructuredReply, 99} {
		data := []byte(nil)
		if opt == optGo || opt == optInfo {
			data = infoData("disk")
		}
		c.option(opt, data)
		if r := c.optReply(); r.typ != repErrTLSReqd {
			t.Errorf("option %d before TLS: reply %#x, want NBD_REP_ERR_TLS_REQD", opt, r.typ)
		}
	}
	c.option(optExportName, []byte("disk"))
	c.expectEOF()

	c = dialTCP(t, addr)
	c.u32(flagFixedNewstyle)
	c.option(optAbort, nil)
	if r := c.optReply(); r.typ != repAck {
		t.Errorf("NBD_OPT_ABORT before TLS: reply %#x, want ACK", r.typ)
	}

	_, sock := startServer(t, peerExports()...)
	u := dial(t, sock)
	u.u32(flagFixedNewstyle)
	u.option(optStartTLS, nil)
	if r := u.optReply(); r.typ != repErrUnsup {
		t.Errorf("STARTTLS without TLS configured: reply %#x, want NBD_REP_ERR_UNSUP", r.typ)
	}
}

// TestHandshakeTimeout: a client that connects and says nothing is
// dropped after HandshakeTimeout, TLS or not.
func TestHandshakeTimeout(t *testing.T) {
	certs := makeCerts(t, 0)
	port := startTLSServer(t, certs, false, func(s *Server) {
		s.TLSMode = TLSRequired
		s.HandshakeTimeout = 300 * time.Millisecond
	})
	nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	start := time.Now()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	total := 0
	for {
		n, err := nc.Read(buf)
		total += n
		if err != nil {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("a silent client was held %v (%v)", time.Since(start), err)
			}
			break
		}
	}
	if total != 18 {
		t.Errorf("read %d bytes before the hang-up, want the 18-byte greeting", total)
	}
}

// dialTCP is dial for a TCP address.
func dialTCP(t *testing.T, addr string) *rawClient {
	t.Helper()
	return dialNet(t, "tcp", addr)
}

// TestTLSPolicyReply: after the TLS handshake, a client the allow-list
// does not name gets NBD_REP_ERR_POLICY for its options, and one it
// names is served.
func TestTLSPolicyReply(t *testing.T) {
	certs := makeCerts(t, 2)
	port := startTLSServer(t, certs, true, func(s *Server) {
		s.TLSMode = TLSRequired
		s.Authorize = AllowSubjects([]string{"CN=client-1,O=hibdisk"})
	})
	for client, want := range map[string]uint32{"client-1": repAck, "client-2": repErrPolicy} {
		c := dialTCP(t, fmt.Sprintf("127.0.0.1:%d", port))
		c.u32(flagFixedNewstyle | flagNoZeroes)
		c.option(optStartTLS, nil)
		if r := c.optReply(); r.typ != repAck {
			t.Fatalf("STARTTLS: reply %#x", r.typ)
		}
		cfg, err := ClientTLS(filepath.Join(certs, client), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c.nc, cfg)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("%s: TLS handshake: %v", client, err)
		}
		c.nc, c.br = tc, bufio.NewReader(tc)
		c.option(optStructuredReply, nil)
		if r := c.optReply(); r.typ != want {
			t.Errorf("%s: NBD_OPT_STRUCTURED_REPLY after TLS: reply %#x, want %#x (%s)", client, r.typ, want, r.data)
		}
		c.option(optStartTLS, nil)
		if r := c.optReply(); r.typ != repErrInvalid && want == repAck {
			t.Errorf("%s: a second STARTTLS: reply %#x, want NBD_REP_ERR_INVALID", client, r.typ)
		}
	}
}

// TestClientTLS: the client reads over TLS from this package's server,
// from qemu-nbd and from nbdkit, each requiring TLS and verifying the
// client's certificate; without credentials, or against a server
// without TLS, it fails with what to do.
func TestClientTLS(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils nbdkit", "qemu-nbd", "nbdkit", "qemu-img", "qemu-io")
	certs := makeCerts(t, 1)
	client := filepath.Join(certs, "client-1")
	dir := t.TempDir()
	raw := filepath.Join(dir, "d.raw")
	for _, args := range [][]string{{"qemu-img", "create", "-q", "-f", "raw", raw, "8M"}, {"qemu-io", "-f", "raw", "-c", "write -P 0x5c 1M 100k", raw}} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	read := func(t *testing.T, uri string) {
		t.Helper()
		target, err := ParseURI(uri)
		if err != nil {
			t.Fatal(err)
		}
		var c *Client
		for try := 0; try < 300; try++ {
			if c, err = Dial(context.Background(), target, ClientOptions{}); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := make([]byte, 2<<20)
		if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want[:len(got)]) {
			t.Fatalf("read over TLS: %v, equal %v", err, bytes.Equal(got, want[:len(got)]))
		}
	}
	serverDir := filepath.Join(certs, "server")
	for name, argv := range map[string][]string{
		"qemu-nbd": {"qemu-nbd", "--object", "tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir=" + serverDir,
			"--tls-creds", "tls0", "-r", "-f", "raw", "-b", "127.0.0.1", "-p", "PORT", "-t", raw},
		"nbdkit": {"nbdkit", "--foreground", "--tls=require", "--tls-certificates=" + serverDir, "--tls-verify-peer",
			"-r", "-i", "127.0.0.1", "-p", "PORT", "file", raw},
	} {
		t.Run(name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := l.Addr().(*net.TCPAddr).Port
			l.Close()
			for i := range argv {
				if argv[i] == "PORT" {
					argv[i] = fmt.Sprint(port)
				}
			}
			cmd := exec.Command(argv[0], argv[1:]...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			read(t, fmt.Sprintf("nbds://127.0.0.1:%d/?tls-certificates=%s", port, client))
		})
	}
	t.Run("hibdisk", func(t *testing.T) {
		s, err := NewServer(Export{Name: "d", Backend: fileBackend(t, raw)})
		if err != nil {
			t.Fatal(err)
		}
		if s.TLS, err = ServerTLS(serverDir, true); err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(l)
		defer s.Shutdown(context.Background())
		port := l.Addr().(*net.TCPAddr).Port
		read(t, fmt.Sprintf("nbds://127.0.0.1:%d/d?tls-certificates=%s", port, client))
		// Refusals that say what to do.
		target, _ := ParseURI(fmt.Sprintf("nbds://127.0.0.1:%d/d", port))
		if _, err := Dial(context.Background(), target, ClientOptions{}); err == nil || !strings.Contains(err.Error(), "tls-certificates=DIR") {
			t.Errorf("nbds:// without credentials: %v", err)
		}
		target, _ = ParseURI(fmt.Sprintf("nbd://127.0.0.1:%d/d", port))
		if _, err := Dial(context.Background(), target, ClientOptions{}); err == nil || !strings.Contains(err.Error(), "nbds://") {
			t.Errorf("nbd:// to a server requiring TLS: %v", err)
		}
	})
	t.Run("no-tls-server", func(t *testing.T) {
		_, sock := startServer(t, peerExports()...)
		target, _ := ParseURI("nbds+unix:///disk?socket=" + sock + "&tls-certificates=" + client)
		if _, err := Dial(context.Background(), target, ClientOptions{}); err == nil || !strings.Contains(err.Error(), "does not offer TLS") {
			t.Errorf("nbds:// to a server without TLS: %v", err)
		}
	})
}

// fileBackend serves a copy of the file at path from memory.
func fileBackend(t *testing.T, path string) Backend {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := newMemBackend(int64(len(b)))
	if _, err := m.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPayloadTimeout: a client that sends a WRITE header and stalls is
// dropped after PayloadTimeout.
func TestPayloadTimeout(t *testing.T) {
	_, sock := startServerWith(t, func(s *Server) { s.PayloadTimeout = 300 * time.Millisecond }, peerExports()...)
	c, _ := connect(t, sock, "disk", true)
	start := time.Now()
	var h [requestHeaderLen]byte
	binary.BigEndian.PutUint32(h[0:], magicRequest)
	binary.BigEndian.PutUint16(h[6:], cmdWrite)
	binary.BigEndian.PutUint64(h[8:], 7)
	binary.BigEndian.PutUint32(h[24:], 64<<10)
	c.write(h[:])
	c.write(make([]byte, 1000)) // some of the payload, then nothing
	c.expectEOF()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a stalled payload held the connection %v", d)
	}
}

// TestConnectionBurst: 200 clients connecting at once to a server that
// serves at most 20 are each served or refused with a reply saying why,
// within a bound, while a client already connected keeps reading.
func TestConnectionBurst(t *testing.T) {
	const limit, burst = 20, 200
	_, sock := startServerWith(t, func(s *Server) { s.MaxConnections = limit }, peerExports()...)
	target := Target{Network: "unix", Address: sock, Export: "disk"}
	busy, err := Dial(context.Background(), target, ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	stop := make(chan struct{})
	reads := make(chan int, 1)
	var slowest time.Duration
	go func() {
		n := 0
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				reads <- n
				return
			default:
			}
			start := time.Now()
			if _, err := busy.ReadAt(buf, int64(n%1000)*int64(len(buf))); err != nil {
				t.Errorf("the connected client's read failed during the burst: %v", err)
				reads <- n
				return
			}
			slowest = max(slowest, time.Since(start))
			n++
		}
	}()
	type outcome struct {
		c   *Client
		err error
	}
	results := make(chan outcome, burst)
	start := time.Now()
	for range burst {
		go func() {
			c, err := Dial(context.Background(), target, ClientOptions{DialTimeout: 30 * time.Second})
			results <- outcome{c, err}
		}()
	}
	served, refused := 0, 0
	for range burst {
		o := <-results
		switch {
		case o.err == nil:
			served++
			defer o.c.Close()
		case strings.Contains(o.err.Error(), "too many connections"):
			refused++
		default:
			t.Errorf("a client of the burst: %v", o.err)
		}
	}
	elapsed := time.Since(start)
	close(stop)
	n := <-reads
	if served != limit-1 || refused != burst-served {
		t.Errorf("burst of %d with a limit of %d (one already connected): %d served, %d refused", burst, limit, served, refused)
	}
	if n == 0 || slowest > 5*time.Second {
		t.Errorf("the connected client read %d times during the burst, slowest %v", n, slowest)
	}
	t.Logf("burst of %d: %d served, %d refused in %v; the connected client read %d x 64 KiB, slowest %v", burst, served, refused, elapsed, n, slowest)
}

// BenchmarkHandshake: connections per second through the whole NBD
// handshake to a TCP server, plaintext and TLS (ECDSA P-256 certificates
// from MakeCerts, TLS 1.3, client certificates verified).
func BenchmarkHandshake(b *testing.B) {
	for _, useTLS := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "tls"}[useTLS], func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "pki")
			if err := MakeCerts(dir, CertOptions{Clients: 1}); err != nil {
				b.Fatal(err)
			}
			s, err := NewServer(Export{Name: "d", Backend: newMemBackend(1 << 20)})
			if err != nil {
				b.Fatal(err)
			}
			if useTLS {
				if s.TLS, err = ServerTLS(filepath.Join(dir, "server"), true); err != nil {
					b.Fatal(err)
				}
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go s.Serve(l)
			defer s.Shutdown(context.Background())
			uri := fmt.Sprintf("nbd://%s/d", l.Addr())
			if useTLS {
				uri = fmt.Sprintf("nbds://%s/d?tls-certificates=%s", l.Addr(), filepath.Join(dir, "client-1"))
			}
			target, err := ParseURI(uri)
			if err != nil {
				b.Fatal(err)
			}
			var opts ClientOptions
			if useTLS {
				if opts.TLS, err = ClientTLS(target.TLSCertificates, "127.0.0.1"); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				c, err := Dial(context.Background(), target, opts)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
		})
	}
}
