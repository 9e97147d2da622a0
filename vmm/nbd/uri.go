package nbd

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Target is where an NBD export lives: the parsed form of an NBD URI
// (NetworkBlockDevice/nbd doc/uri.md), the syntax QEMU, qemu-img, nbdinfo
// and libnbd accept.
type Target struct {
	Network string // "tcp" or "unix"
	Address string // host:port, or the socket path
	Export  string // the export name ("" is the default export)
	TLS     bool   // nbds: the connection must use TLS
	// TLSCertificates is the directory of the client's credentials in
	// QEMU's tls-creds-x509 layout (ClientTLS), from the URI's
	// tls-certificates parameter as libnbd spells it.
	TLSCertificates string
}

// DefaultPort is the IANA port of NBD.
const DefaultPort = "10809"

// ParseURI parses nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH
// and their TLS forms nbds:// and nbds+unix://, and QEMU's older
// nbd:HOST:PORT[:exportname=X] and nbd:unix:PATH[:exportname=X].
func ParseURI(s string) (Target, error) {
	if rest, ok := strings.CutPrefix(s, "nbd:"); ok && !strings.HasPrefix(rest, "//") {
		return parseLegacy(s, rest)
	}
	u, err := url.Parse(s)
	if err != nil {
		return Target{}, fmt.Errorf("NBD URI %q: %w", s, err)
	}
	t := Target{Export: strings.TrimPrefix(u.Path, "/")}
	switch u.Scheme {
	case "nbd", "nbds":
		if u.Host == "" {
			return Target{}, fmt.Errorf("NBD URI %q names no host: want nbd://HOST[:PORT]/EXPORT", s)
		}
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = DefaultPort
		}
		t.Network, t.Address = "tcp", net.JoinHostPort(host, port)
	case "nbd+unix", "nbds+unix":
		t.Network, t.Address = "unix", u.Query().Get("socket")
		if t.Address == "" || u.Host != "" {
			return Target{}, fmt.Errorf("NBD URI %q: want nbd+unix:///EXPORT?socket=PATH", s)
		}
	default:
		return Target{}, fmt.Errorf("%q is not an NBD URI (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)", s)
	}
	t.TLS = strings.HasPrefix(u.Scheme, "nbds")
	t.TLSCertificates = u.Query().Get("tls-certificates")
	if t.TLSCertificates != "" && !t.TLS {
		return Target{}, fmt.Errorf("NBD URI %q: tls-certificates without TLS: use nbds://", s)
	}
	return t, nil
}

// parseLegacy parses QEMU's pre-URI syntax.
func parseLegacy(s, rest string) (Target, error) {
	var t Target
	if i := strings.Index(rest, ":exportname="); i >= 0 {
		rest, t.Export = rest[:i], rest[i+len(":exportname="):]
	}
	if path, ok := strings.CutPrefix(rest, "unix:"); ok {
		t.Network, t.Address = "unix", path
	} else {
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return Target{}, fmt.Errorf("NBD address %q: want nbd:HOST:PORT or nbd:unix:PATH: %w", s, err)
		}
		t.Network, t.Address = "tcp", net.JoinHostPort(host, port)
	}
	if t.Address == "" {
		return Target{}, fmt.Errorf("NBD address %q names no server", s)
	}
	return t, nil
}

// URI is the target in NBD URI form.
func (t Target) URI() string {
	scheme := "nbd"
	if t.TLS {
		scheme = "nbds"
	}
	certs := ""
	if t.TLSCertificates != "" {
		certs = "tls-certificates=" + strings.ReplaceAll(url.QueryEscape(t.TLSCertificates), "%2F", "/")
	}
	if t.Network == "unix" {
		if certs != "" {
			certs = "&" + certs
		}
		return fmt.Sprintf("%s+unix:///%s?socket=%s%s", scheme, url.PathEscape(t.Export), strings.ReplaceAll(url.QueryEscape(t.Address), "%2F", "/"), certs)
	}
	if certs != "" {
		certs = "?" + certs
	}
	return fmt.Sprintf("%s://%s/%s%s", scheme, t.Address, url.PathEscape(t.Export), certs)
}

// IsURI reports whether s looks like an NBD URI or QEMU NBD address
// rather than a file name.
func IsURI(s string) bool {
	for _, p := range []string{"nbd://", "nbds://", "nbd+unix://", "nbds+unix://", "nbd:unix:"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
