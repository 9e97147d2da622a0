package qemu_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
)

// TestBootOverTLS: `hibdisk serve` exports a diff layer over NBD with
// TLS on TCP, requiring and checking client certificates (made by
// `hibdisk tls-certs`); QEMU, started with the QEMU options the banner
// prints, boots the test guest, which writes through it; the writes are
// in the layer.
func TestBootOverTLS(t *testing.T) {
	k := guestKit(t)
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.img"), filepath.Join(dir, "job.db")
	writeRawBase(t, base, diskSize, "base", baseDataLen)
	if err := diffdisk.Create(top, diffdisk.CreateOptions{Backing: base, BackingFormat: "raw"}); err != nil {
		t.Fatal(err)
	}
	hibdisk(t, "tls-certs", filepath.Join(dir, "pki"))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	server := exec.Command(bin, "serve", "--nbd", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--tls-creds", filepath.Join(dir, "pki", "server"), "--tls-verify-peer", "--tls-allow", "CN=client-*", "--export", "data", top)
	out, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var qemuLine string
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		line := lines.Text()
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "QEMU:"); ok {
			qemuLine = strings.TrimSpace(rest)
		}
		if strings.HasPrefix(line, "Serving;") {
			break
		}
	}
	if !strings.Contains(qemuLine, "tls-creds=tls0") || !strings.Contains(qemuLine, "endpoint=client") {
		t.Fatalf("the banner's QEMU options lack TLS: %q", qemuLine)
	}
	go func() {
		for lines.Scan() {
		}
	}()

	// The banner's options as they are, with the serial the guest finds
	// its disk by.
	args := []string{"-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-nodefaults",
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		"-kernel", k.Kernel, "-initrd", k.Initrd,
		"-append", "console=ttyS0 panic=-1 quiet " + guestproto.Cmdline(guestproto.TaskPatterns, patternsParams("job"))}
	for _, a := range strings.Fields(qemuLine) {
		if strings.HasPrefix(a, "virtio-blk-pci,") {
			a += ",serial=data"
		}
		args = append(args, a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
	defer cancel()
	vm := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	console, err := vm.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	vm.Stderr = &stderr
	started := time.Now()
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	var res guestproto.Result
	var seen []string
	done := false
	sc := bufio.NewScanner(console)
	for sc.Scan() {
		seen = append(seen, sc.Text())
		if res.ParseLine(sc.Text()) {
			done = true
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	vm.Wait()
	if !done || !res.Passed {
		t.Fatalf("guest over TLS did not pass (reason %q)\nconsole:\n%s\nqemu: %s", res.Reason, strings.Join(seen, "\n"), stderr.String())
	}
	t.Logf("guest over TLS passed in %v", time.Since(started).Round(time.Millisecond))
	if err := server.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := server.Wait(); err != nil {
		t.Fatalf("serve: %v", err)
	}
	checkPatternsJob(t, top, "job", res)
}
