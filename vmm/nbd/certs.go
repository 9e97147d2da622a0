package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CertOptions control MakeCerts.
type CertOptions struct {
	// ServerNames are the server certificate's names: host names and IP
	// addresses clients connect to (libnbd and QEMU check them). Empty
	// means localhost and 127.0.0.1.
	ServerNames []string
	// Clients is how many client certificates to make (client-1, ...).
	Clients int
	// Organization goes into every subject (O=); "hibdisk" when empty.
	Organization string
	// Now is the start of the validity periods (tests); zero means now.
	Now time.Time
}

// MakeCerts makes a certificate authority, a server certificate and
// client certificates in QEMU's tls-creds-x509 layout, so that a first
// TLS setup needs no certtool:
//
//	DIR/ca-cert.pem, DIR/ca-key.pem        the CA (keep ca-key.pem private)
//	DIR/server/ca-cert.pem, server-cert.pem, server-key.pem
//	DIR/client-N/ca-cert.pem, client-cert.pem, client-key.pem
//
// The server directory is `serve --tls-creds`'s and qemu-nbd's
// --tls-creds; a client directory is QEMU's tls-creds-x509 dir with
// endpoint=client, and libnbd's tls-certificates. Keys are ECDSA P-256;
// the CA is valid for ten years, the others for five. Files holding keys
// are mode 0600. Existing files are not overwritten: DIR must not hold a
// CA yet.
func MakeCerts(dir string, opts CertOptions) error {
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		return fmt.Errorf("%s already holds a CA (%s): choose an empty directory", dir, CACertFile)
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	now = now.Add(-time.Hour) // clocks of other machines may lag
	org := opts.Organization
	if org == "" {
		org = "hibdisk"
	}
	names := opts.ServerNames
	if len(names) == 0 {
		names = []string{"localhost", "127.0.0.1"}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: org + " NBD CA", Organization: []string{org}},
		NotBefore:             now,
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, CACertFile), "CERTIFICATE", caDER, 0o644); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, "ca-key.pem"), caKey); err != nil {
		return err
	}
	leaf := func(sub, certFile, keyFile string, tmpl *x509.Certificate) error {
		d := filepath.Join(dir, sub)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore, tmpl.NotAfter = now, now.AddDate(5, 0, 0)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.BasicConstraintsValid = true
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(d, CACertFile), "CERTIFICATE", caDER, 0o644); err != nil {
			return err
		}
		if err := writePEM(filepath.Join(d, certFile), "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		return writeKey(filepath.Join(d, keyFile), key)
	}
	srv := &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0], Organization: []string{org}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			srv.IPAddresses = append(srv.IPAddresses, ip)
		} else {
			srv.DNSNames = append(srv.DNSNames, n)
		}
	}
	if err := leaf("server", ServerCertFile, ServerKeyFile, srv); err != nil {
		return err
	}
	for i := 1; i <= opts.Clients; i++ {
		cl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: fmt.Sprintf("client-%d", i), Organization: []string{org}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if err := leaf(fmt.Sprintf("client-%d", i), ClientCertFile, ClientKeyFile, cl); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n.Add(n, big.NewInt(1))
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists: choose an empty directory", path)
	}
	if err != nil {
		return err
	}
	err = pem.Encode(f, &pem.Block{Type: typ, Bytes: der})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
