package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/hibdisk/hibdisk/vmm/nbd"
)

// tlsFlags are serve's TLS flags, as QEMU and qemu-nbd name them where
// they have a name (--tls-creds) and nbdkit where QEMU has an object
// (--tls=off|on|require, --tls-verify-peer).
type tlsFlags struct {
	creds, mode       *string
	verifyPeer, insec *bool
	allow             multiFlag
}

func addTLSFlags(fs *flagSet) *tlsFlags {
	t := &tlsFlags{}
	t.creds = fs.String("tls-creds", "", "serve NBD over TLS with the server credentials in `DIR` (QEMU's tls-creds-x509 layout: ca-cert.pem, server-cert.pem, server-key.pem; hibdisk tls-certs makes them)")
	t.mode = fs.String("tls", "", "off, on (clients choose) or require (the default with --tls-creds)")
	t.verifyPeer = fs.Bool("tls-verify-peer", false, "require a client certificate signed by the CA in ca-cert.pem (and not revoked by ca-crl.pem, if present)")
	fs.Var(&t.allow, "tls-allow", "with --tls-verify-peer, only clients whose certificate subject matches this `DN-PATTERN` (a glob, e.g. 'CN=runner-*,O=CI'); repeatable")
	t.insec = fs.Bool("insecure", false, "serve over TCP beyond this machine without TLS (anyone who reaches the port reads and writes the disk)")
	return t
}

// serveTLS is what the TLS flags asked for.
type serveTLS struct {
	creds      string // server credentials directory; "" when TLS is off
	mode       nbd.TLSMode
	verifyPeer bool
	allow      []string
}

func (t serveTLS) on() bool { return t.creds != "" }

// options checks the flags against each other and against where the
// server listens (listen: --listen's HOST:PORT, "" for a unix socket).
func (f *tlsFlags) options(listen string) (serveTLS, error) {
	var o serveTLS
	switch *f.mode {
	case "", "require":
		o.mode = nbd.TLSRequired
	case "on":
		o.mode = nbd.TLSOptional
	case "off":
	default:
		return o, usagef("--tls %q: want off, on or require", *f.mode)
	}
	if *f.mode != "off" {
		o.creds = *f.creds
	}
	if *f.mode != "" && *f.mode != "off" && *f.creds == "" {
		return o, usagef("--tls %s needs the server's credentials: --tls-creds DIR (hibdisk tls-certs DIR makes a CA, server and client certificates)", *f.mode)
	}
	if o.creds != "" {
		abs, err := filepath.Abs(o.creds)
		if err != nil {
			return o, err
		}
		o.creds = abs
	}
	o.verifyPeer = *f.verifyPeer
	o.allow = f.allow
	if len(o.allow) > 0 && !o.verifyPeer {
		return o, usagef("--tls-allow checks client certificates: add --tls-verify-peer")
	}
	if (o.verifyPeer || len(o.allow) > 0) && !o.on() {
		return o, usagef("--tls-verify-peer and --tls-allow need TLS: add --tls-creds DIR")
	}
	if listen != "" && !o.on() && !*f.insec && !loopback(listen) {
		return o, usagef("--listen %s without TLS would let anyone who reaches the port read and write the disk: add --tls-creds DIR (hibdisk tls-certs makes one), or --insecure if the network is yours alone", listen)
	}
	return o, nil
}

// loopback reports whether HOST:PORT names this machine only.
func loopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil {
		return false
	}
	if host == "" || host == "localhost" {
		return true // --listen :PORT means 127.0.0.1 (serve's default host)
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// configure sets srv up for TLS.
func (t serveTLS) configure(srv *nbd.Server) error {
	if !t.on() {
		return nil
	}
	cfg, err := nbd.ServerTLS(t.creds, t.verifyPeer)
	if err != nil {
		return err
	}
	srv.TLS, srv.TLSMode = cfg, t.mode
	if len(t.allow) > 0 {
		srv.Authorize = nbd.AllowSubjects(t.allow)
	}
	return nil
}

// uri turns an nbd:// URI into the nbds:// one clients use when TLS is
// required or offered.
func (t serveTLS) uri(u string) string {
	if !t.on() {
		return u
	}
	u = "nbds" + strings.TrimPrefix(u, "nbd")
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + "tls-certificates=" + t.clientCreds()
}

// clientCreds is a client credentials directory to name in the banner:
// the first client-N beside the server's directory, as hibdisk tls-certs
// lays them out, or a placeholder.
func (t serveTLS) clientCreds() string {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(t.creds), "client-*", nbd.ClientCertFile))
	if len(matches) > 0 {
		return filepath.Dir(matches[0])
	}
	return "CLIENT_CREDS_DIR"
}

// qemuObject is QEMU's -object for the client side of the connection.
func (t serveTLS) qemuObject() string {
	return "-object tls-creds-x509,id=tls0,endpoint=client,dir=" + t.clientCreds()
}

// describe adds TLS's lines to the banner.
func (t serveTLS) describe(w io.Writer) {
	if !t.on() {
		return
	}
	mode := "required"
	if t.mode == nbd.TLSOptional {
		mode = "offered (plaintext clients are served too)"
	}
	peers := "any client that trusts the CA"
	if t.verifyPeer {
		peers = "clients with a certificate signed by the CA"
		if len(t.allow) > 0 {
			peers += " whose subject matches " + strings.Join(t.allow, " or ")
		}
	}
	fmt.Fprintf(w, "TLS %s with %s; served to %s.\n", mode, t.creds, peers)
	if _, err := os.Stat(filepath.Join(t.creds, nbd.CACRLFile)); err == nil && t.verifyPeer {
		fmt.Fprintf(w, "Client certificates revoked by %s are refused.\n", filepath.Join(t.creds, nbd.CACRLFile))
	}
}
