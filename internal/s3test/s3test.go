// Package s3test runs a real S3 server for tests: versitygw over a
// directory (its posix backend), on loopback, one per call.
//
// versitygw runs without --nometa: with --nometa (v1.8.0) it keeps no
// ETags, so it ignores If-None-Match on PutObject (an existing object is
// overwritten) and answers If-Match with NoSuchKey; with its metadata in
// extended attributes it honours both, on PutObject, GetObject and
// CompleteMultipartUpload (docs/remote-work.md).
package s3test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Credentials of every server Start runs.
const (
	AccessKey = "hibdisk-test"
	SecretKey = "hibdisk-test-secret"
)

// Server is a running versitygw.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT
	// Dir is its posix root: bucket B's object K is the file Dir/B/K.
	Dir string

	bin, addr string
	stop      func()
}

// Binary finds versitygw: in build/tools of the module (where `make
// test` installs it), else on PATH. When it is missing the test fails in
// CI (env CI set) and is skipped elsewhere, saying how to install it.
func Binary(t testing.TB) string {
	t.Helper()
	if dir, err := os.Getwd(); err == nil {
		for ; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				p := filepath.Join(dir, "build", "tools", "versitygw")
				if _, err := os.Stat(p); err == nil {
					return p
				}
				break
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatal("versitygw not found in build/tools or on PATH: CI must run `make test`, which installs it")
	}
	t.Skip("versitygw not found in build/tools or on PATH; `make test` installs it (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
	return ""
}

// Start runs versitygw on a free loopback port over a new directory,
// creates the given buckets (directories of its root), waits until it
// answers, sets the AWS environment for the SDK (credentials, region; no
// instance metadata lookups) and kills it when the test ends.
func Start(t testing.TB, buckets ...string) *Server {
	t.Helper()
	bin := Binary(t)
	dir := t.TempDir()
	for _, b := range buckets {
		if err := os.Mkdir(filepath.Join(dir, b), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for attempt := 0; ; attempt++ {
		s, err := start(t, bin, dir, "")
		if err == nil {
			t.Setenv("AWS_ACCESS_KEY_ID", AccessKey)
			t.Setenv("AWS_SECRET_ACCESS_KEY", SecretKey)
			t.Setenv("AWS_REGION", "us-east-1")
			t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
			t.Setenv("AWS_PROFILE", "")
			t.Setenv("AWS_ENDPOINT_URL_S3", "")
			t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, ".no-aws-config"))
			t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, ".no-aws-credentials"))
			return s
		}
		if attempt == 3 {
			t.Fatalf("start versitygw: %v", err)
		}
	}
}

func start(t testing.TB, bin, dir, addr string) (*Server, error) {
	if addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		addr = l.Addr().String()
		l.Close()
	}
	cmd := exec.Command(bin, "--port", addr, "posix", dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+AccessKey, "ROOT_SECRET_KEY="+SecretKey)
	// A test binary that is killed takes its server with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	// Pdeathsig fires when the thread that started the child exits: the
	// goroutine keeps its thread until the server is reaped.
	started, exited := make(chan error, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cmd.Process.Kill()
			<-exited
		})
	}
	endpoint := "http://" + addr
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("versitygw exited: %v: %s", err, log.String())
		default:
		}
		resp, err := client.Get(endpoint + "/")
		if err == nil {
			resp.Body.Close()
			break // any answer (403 without credentials) means it serves
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("versitygw did not answer on %s within 30s: %s", addr, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(stop)
	return &Server{Endpoint: endpoint, Dir: dir, bin: bin, addr: addr, stop: stop}, nil
}

// Kill kills the server (SIGKILL) and waits for it to exit.
func (s *Server) Kill() { s.stop() }

// Restart starts the server again, after Kill, on the same address and
// directory.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var n *Server
		if n, err = start(t, s.bin, s.Dir, s.addr); err == nil {
			s.stop = n.stop
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("restart versitygw on %s: %v", s.addr, err)
}

// ObjectPath is the file holding object key of bucket.
func (s *Server) ObjectPath(bucket, key string) string {
	return filepath.Join(s.Dir, bucket, filepath.FromSlash(key))
}
