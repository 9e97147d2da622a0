// Package qemu launches QEMU guests whose disks are hibdisk layer chains
// served over NBD, reads their serial console line by line, and speaks
// QMP to them.
//
// Start builds the command line (Config.Args), opens a private directory
// for the sockets, serves every Disk that has a Layer from an in-process
// NBD server (vmm/nbd) whose socket listens before QEMU starts, starts
// QEMU, and connects QMP. Disks may instead name an NBD server already
// running elsewhere (Disk.Socket), such as a `hibdisk serve` process.
// Supervise runs a machine for a command line: it quits it on an
// interrupt and answers RequestHibernate from other processes.
//
// # Invariants
//
//   - The in-process NBD server listens before QEMU starts, so QEMU's NBD
//     client never races the server.
//   - Every layer a Machine serves is flushed when the Machine ends: Wait
//     shuts the NBD server down (which answers in-flight requests and
//     flushes every export) after QEMU has exited. The caller still owns
//     the layers and closes them after Wait.
//   - QEMU's exit status says nothing about the guest (it is 0 after a
//     guest kernel panic too): callers decide success from the console
//     (WaitLine) and from checking the disks afterwards.
//
// KVM is used only when asked for (Config.Accel = "kvm"): an openable
// /dev/kvm is no proof that KVM works (on some hosts KVM_CREATE_VM
// succeeds and guests still fail), so the default is TCG.
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/vmm/nbd"
	"github.com/hibdisk/hibdisk/vmm/nbddisk"
)

// MaxSerialLength is the longest virtio-blk serial (VIRTIO_BLK_ID_BYTES).
const MaxSerialLength = 20

// Disk is one virtio-blk disk of a machine.
type Disk struct {
	// Name is the NBD export name and the virtio serial the guest finds
	// the disk by (/sys/block/vd*/serial): at most MaxSerialLength bytes
	// of letters, digits, '-', '_' and '.'.
	Name string
	// Layer, when set, is served by the machine's own NBD server:
	// read-write when it is a disklayer.Disk that is not read-only and
	// ReadOnly is false, read-only otherwise.
	Layer disklayer.Layer
	// Socket, instead of Layer, is the unix socket of an NBD server that
	// is already listening; Export is the export name asked of it.
	Socket string
	Export string
	// ReadOnly attaches the disk read-only.
	ReadOnly bool
	// Boot puts the disk first in the BIOS boot order (for booting a
	// disk without Config.Kernel).
	Boot bool
}

// Config describes a machine.
type Config struct {
	// Binary is the QEMU system emulator; "" means qemu-system-x86_64.
	Binary string
	// Accel is QEMU's accelerator; "" means "tcg" (see the package doc).
	Accel string
	// MemoryMiB is the guest RAM; 0 means 256.
	MemoryMiB int
	// CPUs is the number of virtual CPUs; 0 means 1.
	CPUs int
	// Kernel, Initrd and Append boot a Linux kernel directly. Append is
	// added after "console=ttyS0 panic=-1", which put the kernel's
	// console on the captured serial port and turn a panic into QEMU
	// exiting (with -no-reboot).
	Kernel, Initrd, Append string
	Disks                  []Disk
	// Console, when set, receives the serial console's bytes as they
	// arrive (the machine also keeps them as lines, see Lines).
	Console io.Writer
	// Stderr, when set, receives QEMU's own diagnostics as they arrive.
	Stderr io.Writer
	// Logger receives the NBD server's warnings; nil discards them.
	Logger *slog.Logger
	// QMPSocket is where QEMU's QMP server listens; "" puts it in the
	// machine's private directory.
	QMPSocket string
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// MachineType is QEMU's -machine type; "" means "pc". Resume passes
	// the resolved type a snapshot recorded (pc-i440fx-7.2, not pc).
	MachineType string
	// RAMPath, when set, backs guest RAM with this file, shared with QEMU
	// (memory-backend-file, share=on; put it on tmpfs): the host can read
	// RAM while the guest is stopped, which is how Hibernate saves it. An
	// existing file of the right size is used as it is (Resume fills one
	// first); Wait removes the file.
	RAMPath string
	// ExtraFiles are inherited by QEMU as fds 3, 4, ... (os/exec), e.g.
	// an incoming migration stream ("fd:3").
	ExtraFiles []*os.File

	// incoming starts QEMU waiting for an incoming migration
	// (-incoming defer; Resume).
	incoming bool
}

func (c Config) withDefaults() Config {
	if c.Binary == "" {
		c.Binary = "qemu-system-x86_64"
	}
	if c.Accel == "" {
		c.Accel = "tcg"
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 256
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.MachineType == "" {
		c.MachineType = "pc"
	}
	return c
}

// Args returns QEMU's arguments (without the binary) for a machine whose
// QMP socket is qmpSocket and whose in-process NBD server listens on
// nbdSocket.
func (c Config) Args(qmpSocket, nbdSocket string) ([]string, error) {
	c = c.withDefaults()
	if c.Kernel == "" && c.Initrd != "" {
		return nil, errors.New("qemu: an initrd needs a kernel")
	}
	machine := c.MachineType
	var ram []string
	if c.RAMPath != "" {
		if strings.ContainsAny(c.RAMPath, ",") {
			return nil, fmt.Errorf("qemu: RAM file %q: QEMU's option syntax does not allow ','", c.RAMPath)
		}
		machine += ",memory-backend=" + ramBackendID
		ram = []string{"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=%s,share=on", ramBackendID, c.MemoryMiB, c.RAMPath)}
	}
	args := []string{
		"-accel", c.Accel,
		"-machine", machine,
		"-m", fmt.Sprint(c.MemoryMiB),
		"-smp", fmt.Sprint(c.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-qmp", "unix:" + qmpSocket + ",server=on,wait=off",
	}
	args = append(args, ram...)
	if c.Kernel != "" {
		args = append(args, "-kernel", c.Kernel)
		if c.Initrd != "" {
			args = append(args, "-initrd", c.Initrd)
		}
		args = append(args, "-append", strings.TrimSpace("console=ttyS0 panic=-1 "+c.Append))
	}
	seen := map[string]bool{}
	boots := 0
	for i, d := range c.Disks {
		if err := checkSerial(d.Name); err != nil {
			return nil, err
		}
		if seen[d.Name] {
			return nil, fmt.Errorf("qemu: disk name %q used twice", d.Name)
		}
		seen[d.Name] = true
		sock, export := nbdSocket, d.Name
		switch {
		case d.Layer != nil && d.Socket != "":
			return nil, fmt.Errorf("qemu: disk %q has both a Layer and a Socket", d.Name)
		case d.Layer == nil && d.Socket == "":
			return nil, fmt.Errorf("qemu: disk %q has neither a Layer nor a Socket", d.Name)
		case d.Socket != "":
			sock, export = d.Socket, d.Export
		}
		node := fmt.Sprintf("disk%d", i)
		blockdev := fmt.Sprintf("driver=nbd,node-name=%s,server.type=unix,server.path=%s,discard=unmap", node, sock)
		if export != "" {
			blockdev += ",export=" + export
		}
		if readOnly(d) {
			blockdev += ",read-only=on"
		}
		device := fmt.Sprintf("virtio-blk-pci,drive=%s,serial=%s", node, d.Name)
		if d.Boot {
			boots++
			device += ",bootindex=0"
		}
		args = append(args, "-blockdev", blockdev, "-device", device)
	}
	if boots > 1 {
		return nil, errors.New("qemu: more than one boot disk")
	}
	if c.Kernel == "" && boots == 0 {
		return nil, errors.New("qemu: nothing to boot: give a kernel or a boot disk")
	}
	if c.incoming {
		args = append(args, "-incoming", "defer")
	}
	return append(args, c.ExtraArgs...), nil
}

// checkSerial keeps serials to what QEMU's option parser and the guest's
// sysfs pass through unchanged.
func checkSerial(name string) error {
	if name == "" || len(name) > MaxSerialLength {
		return fmt.Errorf("qemu: disk name %q: want 1 to %d bytes (it is the virtio serial)", name, MaxSerialLength)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("qemu: disk name %q: only letters, digits, '-', '_' and '.'", name)
		}
	}
	return nil
}

// readOnly says whether d is attached read-only.
func readOnly(d Disk) bool {
	if d.ReadOnly || d.Layer == nil {
		return d.ReadOnly
	}
	return !nbddisk.Writable(d.Layer)
}

// Machine is a running (or exited) QEMU.
type Machine struct {
	cfg     Config // with defaults
	cmd     *exec.Cmd
	args    []string
	dir     string // private directory: sockets
	qmpPath string
	nbdPath string // the NBD server's socket; "" without one
	qmp     *QMP
	server  *nbd.Server
	served  chan error // Serve's result; nil without a server

	exited chan struct{} // closed when QEMU has exited and the console is drained

	mu      sync.Mutex
	lines   []string
	partial []byte
	changed chan struct{} // closed and replaced when lines change or QEMU exits
	stderr  bytes.Buffer

	waitOnce sync.Once
	waitRes  error

	// owned are layers the machine opened itself (Resume), closed by
	// Wait after the NBD server has flushed them.
	owned []io.Closer
	// ram holds the unlinked RAM file open (holdRAM); cfg.RAMPath then
	// names it through /proc/self/fd.
	ram *os.File
	// ramIndex, for a resumed machine, is its RAM as the resume rebuilt
	// it from the chain below its top layer: Hibernate compares with it
	// instead of reading the chain below.
	ramIndex *hibfile.PageIndex
	// ramSums, for a resumed machine, are the page sums of that RAM, so
	// its hibernate hashes only the pages that changed (hibernateDigest).
	ramSums *ramSums
}

// closeOwned closes the layers the machine opened, last first.
func (m *Machine) closeOwned() error {
	var errs []error
	for i := len(m.owned) - 1; i >= 0; i-- {
		errs = append(errs, m.owned[i].Close())
	}
	m.owned = nil
	return errors.Join(errs...)
}

// Start launches a machine. ctx bounds only the start (QMP connection);
// the machine runs until the guest powers off, Shutdown, or Kill. After a
// successful Start the caller must call Wait (or Shutdown).
func Start(ctx context.Context, cfg Config) (_ *Machine, err error) {
	cfg = cfg.withDefaults()
	dir, err := os.MkdirTemp("", "hibdisk-vm-")
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	m := &Machine{cfg: cfg, dir: dir, exited: make(chan struct{}), changed: make(chan struct{})}
	defer func() {
		if err != nil {
			m.stopServer()
			os.RemoveAll(dir)
			if cfg.RAMPath != "" {
				os.Remove(cfg.RAMPath)
			}
			m.closeOwned()
		}
	}()
	m.qmpPath = cfg.QMPSocket
	if m.qmpPath == "" {
		m.qmpPath = filepath.Join(dir, "qmp.sock")
	}
	nbdPath := filepath.Join(dir, "nbd.sock")
	if m.args, err = cfg.Args(m.qmpPath, nbdPath); err != nil {
		return nil, err
	}
	if err := m.startServer(cfg, nbdPath); err != nil {
		return nil, err
	}
	if m.server != nil {
		m.nbdPath = nbdPath
	}

	consoleR, consoleW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	m.cmd = exec.Command(cfg.Binary, m.args...)
	m.cmd.Stdin = nil // /dev/null: the console is output only
	m.cmd.ExtraFiles = cfg.ExtraFiles
	// Own process group: a terminal's Ctrl-C reaches the caller, which
	// shuts the machine down through QMP, not QEMU directly. Pdeathsig:
	// QEMU does not outlive a caller that dies.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	m.cmd.Stdout = consoleW
	var stderr io.Writer = lockedWriter{&m.mu, &m.stderr}
	if cfg.Stderr != nil {
		stderr = io.MultiWriter(stderr, cfg.Stderr)
	}
	m.cmd.Stderr = stderr
	if err := m.cmd.Start(); err != nil {
		consoleR.Close()
		consoleW.Close()
		return nil, fmt.Errorf("qemu: start %s: %w", cfg.Binary, err)
	}
	consoleW.Close() // QEMU holds the write end; EOF when it exits
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		m.readConsole(consoleR, cfg.Console)
	}()
	go func() {
		// The exit status is available through ExitCode; it says
		// nothing about the guest.
		m.cmd.Wait()
		<-drained
		m.mu.Lock()
		m.notifyLocked()
		m.mu.Unlock()
		close(m.exited)
	}()

	// QMP: QEMU creates the socket while starting; give up if it exits.
	dialCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-m.exited:
			cancel()
		case <-dialCtx.Done():
		}
	}()
	if m.qmp, err = DialQMP(dialCtx, m.qmpPath); err != nil {
		m.cmd.Process.Kill()
		<-m.exited
		return nil, fmt.Errorf("%w; qemu stderr: %s", err, strings.TrimSpace(m.Stderr()))
	}
	if err := m.holdRAM(); err != nil {
		m.cmd.Process.Kill()
		<-m.exited
		return nil, err
	}
	if cfg.RAMPath != "" && !cfg.incoming {
		// A machine that may be hibernated: ready its layer while the
		// guest boots (Resume does it while it rebuilds the RAM).
		go prefaultTop(cfg)
	}
	return m, nil
}

// prefaultTop readies the top layer of the machine's first disk for the
// hibernate's large transaction (sqlitelayer.File.Prefault). A failure
// only costs speed: a layer that cannot be used says so on its next
// request.
func prefaultTop(cfg Config) {
	if len(cfg.Disks) == 0 || readOnly(cfg.Disks[0]) {
		return
	}
	if d, ok := cfg.Disks[0].Layer.(*diffdisk.Disk); ok {
		if top, ok := d.Layer(0).(*sqlitelayer.File); ok {
			top.Prefault()
		}
	}
}

// holdRAM opens the RAM file and unlinks it once QEMU has mapped it
// (QEMU creates its memory backends before it answers QMP): from then on
// the RAM belongs to the two processes that hold it open and is freed
// when both are gone, however they end, so a killed `vm run` leaves no
// file in /dev/shm. Hibernate reads it through /proc/self/fd.
func (m *Machine) holdRAM() error {
	if m.cfg.RAMPath == "" {
		return nil
	}
	f, err := os.Open(m.cfg.RAMPath)
	if err != nil {
		return fmt.Errorf("qemu: hold RAM file: %w", err)
	}
	if err := os.Remove(m.cfg.RAMPath); err != nil {
		f.Close()
		return fmt.Errorf("qemu: unlink RAM file: %w", err)
	}
	m.ram = f
	m.cfg.RAMPath = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	return nil
}

func (m *Machine) startServer(cfg Config, path string) error {
	var exports []nbd.Export
	for _, d := range cfg.Disks {
		if d.Layer == nil {
			continue
		}
		// No MultiConn: QEMU opens one connection per disk (see
		// nbddisk.ExportOptions).
		exports = append(exports, nbddisk.Export(d.Name, d.Layer, nbddisk.ExportOptions{
			Description: "disk " + d.Name,
			ReadOnly:    d.ReadOnly,
		}))
	}
	if len(exports) == 0 {
		return nil
	}
	srv, err := nbd.NewServer(exports...)
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	srv.Logger = cfg.Logger
	l, err := nbd.ListenUnix(path)
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	m.server = srv
	m.served = make(chan error, 1)
	go func() { m.served <- srv.Serve(l) }()
	return nil
}

// stopServer shuts the NBD server down, flushing every export.
func (m *Machine) stopServer() error {
	if m.server == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := m.server.Shutdown(ctx)
	<-m.served
	m.server = nil
	if err != nil {
		return fmt.Errorf("qemu: shut down NBD server: %w", err)
	}
	return nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// readConsole copies the console to tee and splits it into lines
// (without "\r\n").
func (m *Machine) readConsole(r *os.File, tee io.Writer) {
	defer r.Close()
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if tee != nil {
				tee.Write(buf[:n])
			}
			m.mu.Lock()
			m.partial = append(m.partial, buf[:n]...)
			for {
				i := bytes.IndexByte(m.partial, '\n')
				if i < 0 {
					break
				}
				m.lines = append(m.lines, strings.TrimRight(string(m.partial[:i]), "\r"))
				m.partial = m.partial[i+1:]
			}
			m.notifyLocked()
			m.mu.Unlock()
		}
		if err != nil {
			m.mu.Lock()
			if len(m.partial) > 0 {
				m.lines = append(m.lines, strings.TrimRight(string(m.partial), "\r"))
				m.partial = nil
			}
			m.mu.Unlock()
			return
		}
	}
}

func (m *Machine) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// Args is QEMU's command line (without the binary).
func (m *Machine) Args() []string { return m.args }

// QMP is the machine's QMP connection.
func (m *Machine) QMP() *QMP { return m.qmp }

// QMPPath is the QMP socket (for other clients while the machine runs).
func (m *Machine) QMPPath() string { return m.qmpPath }

// PID is QEMU's process id.
func (m *Machine) PID() int { return m.cmd.Process.Pid }

// NBDSocket is the unix socket of the machine's own NBD server, which
// exports each Disk.Layer under its disk name; "" when it has none.
func (m *Machine) NBDSocket() string { return m.nbdPath }

// DiskExport says where one of the machine's disks is served.
type DiskExport struct {
	Name   string // the disk's name (its virtio serial)
	Socket string // the NBD server's unix socket
	Export string // the export name on that server
}

// DiskExports lists where the machine's disks are served, in the order
// they are attached: by its own NBD server (NBDSocket) under their
// names, or by the server a Disk.Socket names.
func (m *Machine) DiskExports() []DiskExport {
	var out []DiskExport
	for _, d := range m.cfg.Disks {
		if d.Layer != nil {
			out = append(out, DiskExport{Name: d.Name, Socket: m.nbdPath, Export: d.Name})
		} else {
			out = append(out, DiskExport{Name: d.Name, Socket: d.Socket, Export: d.Export})
		}
	}
	return out
}

// Lines returns the console lines so far.
func (m *Machine) Lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.lines...)
}

// Stderr returns what QEMU wrote to its stderr so far.
func (m *Machine) Stderr() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stderr.String()
}

// WaitLine returns the first console line (from the start of the run)
// for which match is true, waiting until one arrives, QEMU exits
// (ErrExited), or ctx ends.
func (m *Machine) WaitLine(ctx context.Context, match func(line string) bool) (string, error) {
	seen := 0
	for {
		m.mu.Lock()
		lines, changed := m.lines[seen:], m.changed
		m.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, nil
			}
		}
		seen += len(lines)
		select {
		case <-m.exited:
			// The console is drained once exited is closed: one more
			// look at the lines that came with the exit.
			m.mu.Lock()
			rest := m.lines[seen:]
			m.mu.Unlock()
			for _, l := range rest {
				if match(l) {
					return l, nil
				}
			}
			return "", ErrExited
		case <-changed:
		case <-ctx.Done():
			return "", fmt.Errorf("qemu: wait for console line: %w", ctx.Err())
		}
	}
}

// Exited is closed when QEMU has exited.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// ExitCode is QEMU's exit status once it has exited (-1 before, or when
// killed by a signal). It is informational only: see the package doc.
func (m *Machine) ExitCode() int {
	select {
	case <-m.exited:
		return m.cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

// Wait waits for QEMU to exit, then shuts down the in-process NBD server,
// which flushes every layer it serves, and removes the private directory.
// It returns the flush's error (never QEMU's exit status). If ctx ends
// first, Wait returns ctx's error and the machine keeps running.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
	case <-ctx.Done():
		return fmt.Errorf("qemu: wait: %w", ctx.Err())
	}
	m.waitOnce.Do(func() {
		if m.qmp != nil {
			m.qmp.Close()
		}
		m.waitRes = m.stopServer()
		os.RemoveAll(m.dir)
		if m.ram != nil {
			m.ram.Close()
		} else if m.cfg.RAMPath != "" {
			os.Remove(m.cfg.RAMPath)
		}
		m.waitRes = errors.Join(m.waitRes, m.closeOwned())
	})
	return m.waitRes
}

// Shutdown asks QEMU to quit over QMP (QEMU flushes its disks first) and
// waits as Wait does. If QEMU has not exited when ctx ends, it is killed.
func (m *Machine) Shutdown(ctx context.Context) error {
	select {
	case <-m.exited:
	default:
		if err := m.qmp.Quit(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
			select {
			case <-m.exited: // quit raced the guest powering off
			default:
				m.Kill()
			}
		}
		select {
		case <-m.exited:
		case <-ctx.Done():
			m.Kill()
		}
	}
	return m.Wait(context.Background())
}

// Kill stops QEMU at once (SIGKILL), as a crash would; follow it with Wait.
func (m *Machine) Kill() error {
	select {
	case <-m.exited:
		return nil
	default:
	}
	if err := m.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("qemu: kill: %w", err)
	}
	return nil
}
