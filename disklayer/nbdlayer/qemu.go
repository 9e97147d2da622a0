package nbdlayer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
)

// qemuNBDStart bounds how long qemu-nbd may take to listen.
const qemuNBDStart = 30 * time.Second

// OpenImage reads the image at path, in one of disklayer.QEMUFormats,
// through a private qemu-nbd: `qemu-nbd --read-only --format=FORMAT` on a
// unix socket in a fresh 0700 directory, so QEMU's own code interprets
// the format (compressed clusters, backing chains, subclusters, zstd).
// The qemu-nbd process holds QEMU's shared lock on the image and its
// backing files while the layer is open, so a QEMU writer cannot change
// them underneath; it is killed on Close, and with hibdisk if hibdisk
// dies (PR_SET_PDEATHSIG).
func OpenImage(path, format string) (*Layer, error) {
	if !disklayer.IsQEMUFormat(format) {
		return nil, fmt.Errorf("open %q: %q is not an image format hibdisk reads through QEMU (%s): %w", path, format, strings.Join(disklayer.QEMUFormats, ", "), disklayer.ErrInvalid)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open %s image: %w", format, err)
	}
	exe, err := exec.LookPath("qemu-nbd")
	if err != nil {
		return nil, fmt.Errorf("open %s image %q: reading %s needs qemu-nbd (apt-get install qemu-utils): %w", format, path, format, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hibdisk-qemu-nbd-")
	if err != nil {
		return nil, fmt.Errorf("open %s image %q: %w", format, path, err)
	}
	sock := filepath.Join(dir, "s")
	cmd := exec.Command(exe, "--read-only", "--format="+format, "--socket="+sock, "--persistent", "--shared=0", "--", abs)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("open %s image %q: start qemu-nbd: %w", format, path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		cmd.Process.Kill()
		<-exited
		return os.RemoveAll(dir)
	}
	c, err := waitQEMUNBD(sock, exited, &stderr)
	if err != nil {
		stop()
		return nil, fmt.Errorf("open %s image %q: %w", format, path, err)
	}
	// Connected: nobody needs the socket's name any more (the client does
	// not redial a local qemu-nbd), so a hibdisk killed with SIGKILL
	// leaves no directory behind; qemu-nbd dies with it (Pdeathsig).
	os.RemoveAll(dir)
	l, err := newLayer(c)
	if err != nil {
		c.Close()
		stop()
		return nil, fmt.Errorf("open %s image %q: %w", format, path, err)
	}
	l.closeFn = stop
	return l, nil
}

// waitQEMUNBD connects to qemu-nbd once it listens, or returns its first
// error line if it exits first.
func waitQEMUNBD(sock string, exited chan error, stderr *bytes.Buffer) (*nbd.Client, error) {
	deadline := time.Now().Add(qemuNBDStart)
	target := nbd.Target{Network: "unix", Address: sock}
	for {
		select {
		case err := <-exited:
			exited <- err
			return nil, fmt.Errorf("qemu-nbd: %s", firstLine(stderr.String(), err))
		default:
		}
		if _, err := os.Stat(sock); err == nil {
			c, err := nbd.Dial(context.Background(), target, nbd.ClientOptions{})
			if err == nil {
				return c, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("qemu-nbd did not listen within %v", qemuNBDStart)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// firstLine is the first line of a tool's error output, without the
// tool's name, or err when it printed nothing.
func firstLine(out string, err error) string {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		for _, p := range []string{"qemu-nbd: ", "qemu-img: "} {
			line = strings.TrimPrefix(line, p)
		}
		return line
	}
	return fmt.Sprint(err)
}

// ChainImage is one file of a foreign image's own backing chain, as
// `qemu-img info --backing-chain` describes it.
type ChainImage struct {
	Filename    string `json:"filename"`
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	Backing     string `json:"backing-filename,omitempty"`
	// Compressed and the rest of qemu-img's fields are not needed.
}

// Chain describes the image at path (format given) and its backing
// files, top first, through `qemu-img info --backing-chain -U`.
func Chain(path, format string) ([]ChainImage, error) {
	exe, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil, fmt.Errorf("describe %s image %q: needs qemu-img (apt-get install qemu-utils): %w", format, path, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "info", "--backing-chain", "--output=json", "-U", "-f", format, "--", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("describe %s image %q: qemu-img: %s", format, path, firstLine(stderr.String(), err))
	}
	var chain []ChainImage
	if err := json.Unmarshal(out, &chain); err != nil {
		return nil, fmt.Errorf("describe %s image %q: qemu-img info: %w", format, path, err)
	}
	if len(chain) == 0 {
		return nil, errors.New("qemu-img info described no image")
	}
	return chain, nil
}
