package main

import (
	"context"
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

// freePort returns a TCP port on 127.0.0.1 nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestTLSCertsWithQemuNbd: the credentials `hibdisk tls-certs` makes work
// with GnuTLS on both ends: qemu-nbd serving with them and verifying
// its peers, libnbd's nbdinfo connecting with a client's; a client of
// another CA is refused.
func TestTLSCertsWithQemuNbd(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils libnbd-bin", "qemu-nbd", "nbdinfo", "qemu-img")
	dir := testDir(t)
	out := mustHib(t, dir, "tls-certs", "--clients", "2", "pki")
	for _, want := range []string{"pki/server", "pki/client-1", "pki/client-2"} {
		if !strings.Contains(out, want) {
			t.Errorf("tls-certs output lacks %s:\n%s", want, out)
		}
	}
	for _, key := range []string{"pki/ca-key.pem", "pki/server/server-key.pem", "pki/client-1/client-key.pem"} {
		if fi, err := os.Stat(filepath.Join(dir, key)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, want mode 0600", key, fi)
		}
	}
	if r := hib(t, dir, "tls-certs", "pki"); r.code == 0 || !strings.Contains(r.stderr, "already holds a CA") {
		t.Errorf("tls-certs into an existing CA: exit %d, %s", r.code, r.stderr)
	}
	mustHib(t, dir, "tls-certs", "other")

	img := filepath.Join(dir, "disk.img")
	if out, err := exec.Command("qemu-img", "create", "-f", "raw", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	server := exec.CommandContext(ctx, "qemu-nbd", "--object",
		"tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir="+filepath.Join(dir, "pki/server"),
		"--tls-creds", "tls0", "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", fmt.Sprint(port), "-t", img)
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer server.Wait()
	defer cancel()
	uri := func(creds string) string {
		return fmt.Sprintf("nbds://127.0.0.1:%d/disk?tls-certificates=%s", port, filepath.Join(dir, creds))
	}
	var info []byte
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cmd := exec.Command("nbdinfo", uri("pki/client-1"))
		cmd.Env = append(os.Environ(), "PATH=/usr/bin:"+os.Getenv("PATH"))
		if info, err = cmd.CombinedOutput(); err == nil {
			break
		}
	}
	if err != nil || !strings.Contains(string(info), "with TLS") {
		t.Fatalf("nbdinfo with client-1's certificate: %v\n%s", err, info)
	}
	cmd := exec.Command("nbdinfo", uri("other/client-1"))
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("a client of another CA was served:\n%s", out)
	}
}

// TestServeTLSFlags: serve's TLS flags refused in one line where they do
// not make sense, and a job layer made over a TLS-served golden base
// (create -b nbds://...?tls-certificates=DIR) reads the base's content.
func TestServeTLSFlags(t *testing.T) {
	testenv.RequireTools(t, "qemu-utils", "qemu-img", "qemu-io")
	dir := testDir(t)
	mustHib(t, dir, "tls-certs", "pki")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", filepath.Join(dir, "g.raw"), "8M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x6d 1M 1M", filepath.Join(dir, "g.raw")).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io: %v %s", err, out)
	}
	mustHib(t, dir, "convert", "g.raw", "golden.db")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "0.0.0.0:1"}, "--insecure"},
		{[]string{"--tls", "on"}, "--tls-creds DIR"},
		{[]string{"--tls", "maybe", "--tls-creds", "pki/server"}, "want off, on or require"},
		{[]string{"--tls-creds", "pki/server", "--tls-allow", "CN=x"}, "--tls-verify-peer"},
		{[]string{"--tls-verify-peer"}, "need TLS"},
		{[]string{"--max-connections", "-1"}, "--max-connections"},
	} {
		r := hib(t, dir, append(append([]string{"serve", "--nbd"}, c.args...), "golden.db")...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("serve %v: exit %d, %q (want one line naming %s)", c.args, r.code, r.stderr, c.want)
		}
	}
	port := freePort(t)
	holdLayer(t, dir, "-r", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--tls-creds", "pki/server", "--tls-verify-peer", "golden.db")
	uri := fmt.Sprintf("nbds://127.0.0.1:%d/?tls-certificates=%s", port, filepath.Join(dir, "pki", "client-1"))
	// Job layers outside dir: testDir checks dir's layers after the
	// server is gone.
	job := filepath.Join(t.TempDir(), "job.db")
	mustHib(t, dir, "create", "-b", uri, "-F", "nbd", job)
	if got := mustHib(t, dir, "compare", job, "g.raw"); !strings.Contains(got, "identical") {
		t.Errorf("a job layer over the TLS-served base differs from it: %s", got)
	}
	// Without the credentials: one line saying what to add.
	r := hib(t, dir, "create", "-b", fmt.Sprintf("nbds://127.0.0.1:%d/", port), "-F", "nbd", filepath.Join(t.TempDir(), "job2.db"))
	if r.code == 0 || !strings.Contains(r.stderr, "tls-certificates=DIR") {
		t.Errorf("create over nbds:// without credentials: exit %d, %q", r.code, r.stderr)
	}
}
