package nbd

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// TLSMode says how a Server with a TLS configuration uses it (the NBD
// specification's "TLS support" section).
type TLSMode int

const (
	// TLSRequired refuses every option but NBD_OPT_STARTTLS and
	// NBD_OPT_ABORT with NBD_REP_ERR_TLS_REQD until TLS is initiated,
	// and hangs up on NBD_OPT_EXPORT_NAME before it (FORCEDTLS).
	TLSRequired TLSMode = iota
	// TLSOptional offers NBD_OPT_STARTTLS and serves every export with
	// or without it (SELECTIVETLS with no TLS-only export).
	TLSOptional
)

// tlsGate runs before an option is served: it answers NBD_OPT_STARTTLS,
// and refuses options that must wait for TLS, or come from a client
// whose certificate Authorize refused. handled reports that it answered
// (or ended the session); otherwise the option is served as usual.
func (h *optionHandler) tlsGate() (done, handled bool, err error) {
	c, s := h.c, h.c.srv
	switch {
	case c.full > 0 && h.opt != optAbort:
		if h.opt == optExportName {
			return false, true, fmt.Errorf("refused: the server serves its limit of %d connections", c.full)
		}
		h.reply(repErrPolicy, fmt.Sprintf("too many connections: the server serves its limit of %d; try again later", c.full))
		return false, true, nil
	case h.opt == optStartTLS && s.TLS != nil:
		return false, true, h.startTLS()
	case h.opt == optAbort:
		return false, false, nil
	case c.refused != nil:
		if h.opt == optExportName {
			return false, true, fmt.Errorf("NBD_OPT_EXPORT_NAME from a client whose certificate was refused: %w", c.refused)
		}
		h.reply(repErrPolicy, "this client's certificate is not allowed here: "+c.refused.Error())
		return false, true, nil
	case s.TLS != nil && s.TLSMode == TLSRequired && !c.tls:
		if h.opt == optExportName {
			// It cannot be refused with an error: hang up (the spec's
			// FORCEDTLS rule).
			return false, true, errors.New("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS, which this server requires")
		}
		h.reply(repErrTLSReqd, "this server requires TLS: send NBD_OPT_STARTTLS first")
		return false, true, nil
	}
	return false, false, nil
}

// startTLS answers NBD_OPT_STARTTLS and runs the TLS handshake; from
// then on the connection's reads and writes go through TLS.
func (h *optionHandler) startTLS() error {
	c, s := h.c, h.c.srv
	switch {
	case c.tls:
		h.reply(repErrInvalid, "TLS is already negotiated")
		return nil
	case len(h.data) != 0:
		h.reply(repErrInvalid, "NBD_OPT_STARTTLS takes no data")
		return nil
	}
	h.reply(repAck, "")
	if err := h.bw.Flush(); err != nil {
		return fmt.Errorf("send NBD_OPT_STARTTLS reply: %w", err)
	}
	if c.br.Buffered() > 0 {
		// Bytes the client sent before the handshake would be read as
		// if they had come over TLS.
		return errors.New("client sent data after NBD_OPT_STARTTLS before the TLS handshake")
	}
	tc := tls.Server(c.raw, s.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc, c.tls = tc, true
	c.br = bufio.NewReaderSize(tc, 64<<10)
	h.bw = bufio.NewWriterSize(tc, 4096)
	if s.Authorize != nil {
		if err := s.Authorize(tc.ConnectionState()); err != nil {
			c.refused = err
			s.logf(slog.LevelWarn, "nbd: client refused after TLS handshake", "remote", c.remote, "err", err)
		}
	}
	return nil
}

// The files of QEMU's tls-creds-x509 directory layout (also libnbd's and
// nbdkit's).
const (
	CACertFile     = "ca-cert.pem"
	CACRLFile      = "ca-crl.pem"
	ServerCertFile = "server-cert.pem"
	ServerKeyFile  = "server-key.pem"
	ClientCertFile = "client-cert.pem"
	ClientKeyFile  = "client-key.pem"
)

// ServerTLS loads a server's credentials from dir in QEMU's
// tls-creds-x509 layout: server-cert.pem and server-key.pem, and, with
// verifyPeer, ca-cert.pem, which must have signed every client's
// certificate (clients without one are refused), and the optional
// ca-crl.pem, whose revoked certificates are refused. TLS 1.3 is
// preferred; 1.2 is the oldest accepted.
func ServerTLS(dir string, verifyPeer bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load the server certificate from %s: %w (it needs %s and %s)", dir, err, ServerCertFile, ServerKeyFile)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if !verifyPeer {
		return cfg, nil
	}
	pool, err := loadCAs(dir)
	if err != nil {
		return nil, err
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = pool
	revoked, err := loadCRL(dir, pool)
	if err != nil {
		return nil, err
	}
	if revoked != nil {
		cfg.VerifyPeerCertificate = func(_ [][]byte, chains [][]*x509.Certificate) error {
			for _, chain := range chains {
				for _, crt := range chain {
					if revoked[crt.SerialNumber.String()] {
						return fmt.Errorf("certificate %q (serial %s) is revoked by %s", crt.Subject, crt.SerialNumber, CACRLFile)
					}
				}
			}
			return nil
		}
	}
	return cfg, nil
}

// ClientTLS loads a client's credentials from dir in QEMU's layout:
// ca-cert.pem, which must have signed the server's certificate, and the
// optional client-cert.pem and client-key.pem (needed when the server
// verifies its peers). serverName is checked against the server's
// certificate.
func ClientTLS(dir, serverName string) (*tls.Config, error) {
	pool, err := loadCAs(dir)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	certFile, keyFile := filepath.Join(dir, ClientCertFile), filepath.Join(dir, ClientKeyFile)
	if _, err := os.Stat(certFile); err == nil {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load the client certificate from %s: %w", dir, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadCAs(dir string) (*x509.CertPool, error) {
	b, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("load the CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("load the CA certificate: %s holds no PEM certificate", filepath.Join(dir, CACertFile))
	}
	return pool, nil
}

// loadCRL returns the serial numbers ca-crl.pem revokes, nil when there
// is no such file. The list's signature is checked against the CAs.
func loadCRL(dir string, pool *x509.CertPool) (map[string]bool, error) {
	name := filepath.Join(dir, CACRLFile)
	b, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load the revocation list: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("load the revocation list: %s holds no PEM block", name)
	}
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load the revocation list %s: %w", name, err)
	}
	caBytes, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, err
	}
	signed := false
	for rest := caBytes; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if ca, err := x509.ParseCertificate(blk.Bytes); err == nil && crl.CheckSignatureFrom(ca) == nil {
			signed = true
		}
	}
	if !signed {
		return nil, fmt.Errorf("the revocation list %s is not signed by the CA in %s", name, CACertFile)
	}
	revoked := map[string]bool{}
	for _, r := range crl.RevokedCertificateEntries {
		revoked[r.SerialNumber.String()] = true
	}
	return revoked, nil
}

// AllowSubjects returns an Authorize function that accepts a client
// whose certificate's subject distinguished name (RFC 4514, as
// pkix.Name.String prints it, e.g. "CN=runner-7,O=CI") matches one of
// patterns (path.Match globs: "CN=runner-*,O=CI"), as QEMU's authz-list
// does with its DN rules.
func AllowSubjects(patterns []string) func(tls.ConnectionState) error {
	return func(st tls.ConnectionState) error {
		if len(st.PeerCertificates) == 0 {
			return errors.New("the client sent no certificate")
		}
		dn := st.PeerCertificates[0].Subject.String()
		for _, p := range patterns {
			if ok, _ := path.Match(p, dn); ok {
				return nil
			}
		}
		return fmt.Errorf("subject %q matches none of the allowed patterns (%s)", dn, strings.Join(patterns, "; "))
	}
}
