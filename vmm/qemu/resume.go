package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

// ResumeOptions say which machine snapshot to resume and where.
type ResumeOptions struct {
	// Snapshot is the layer a machine was hibernated into (or a chain
	// whose newest snapshot is one).
	Snapshot string
	// Top is the new diff layer over Snapshot that the resumed machine's
	// first disk writes to. It must not exist: every resume is a branch
	// of its own, and the snapshot layer never changes.
	Top string
	// Binary is the QEMU to run; "" means qemu-system-x86_64.
	Binary string
	// RAMPath is the RAM file to rebuild (on tmpfs); "" makes one in
	// /dev/shm. Hibernating the resumed machine needs it.
	RAMPath string
	// Console, Stderr, Logger and QMPSocket are as in Config.
	Console   io.Writer
	Stderr    io.Writer
	Logger    *slog.Logger
	QMPSocket string
}

// ResumeResult says how long each part of a resume took.
type ResumeResult struct {
	State *VMState
	// RAMBytes is the non-zero RAM written into the RAM file.
	RAMBytes int64
	// Rebuild is reading the hibernate file into the RAM file (with its
	// digest); Start is QEMU's start up to QMP; Migrate is the incoming
	// device state up to the guest running; Total is all of it.
	Rebuild, Start, Migrate, Total time.Duration
}

// Resume continues a hibernated machine: it checks the snapshot's
// vm_state (its digest, the QEMU version and machine type against
// Binary), rebuilds the RAM file from the chain's hibernate file (sparse:
// zero pages stay holes) and checks it against the digest the device
// state was saved with, creates opts.Top over the snapshot layer, starts
// QEMU with the recorded configuration waiting for an incoming migration,
// feeds it the device state through an inherited fd, and continues the
// guest. Any mismatch is an error wrapping ErrStateMismatch, before
// anything is created.
//
// The returned Machine serves opts.Top (and the recorded read-only disks)
// and closes them in Wait.
func Resume(ctx context.Context, opts ResumeOptions) (_ *Machine, _ *ResumeResult, err error) {
	start := time.Now()
	fail := func(err error) (*Machine, *ResumeResult, error) {
		return nil, nil, fmt.Errorf("resume %q: %w", opts.Snapshot, err)
	}
	if opts.Top == "" {
		return fail(fmt.Errorf("no layer to resume on (ResumeOptions.Top): %w", disklayer.ErrInvalid))
	}
	if _, err := os.Lstat(opts.Top); err == nil {
		return fail(fmt.Errorf("%q exists: a resume needs a new layer: %w", opts.Top, disklayer.ErrInvalid))
	}
	binary := opts.Binary
	if binary == "" {
		binary = "qemu-system-x86_64"
	}
	chain, err := hibfile.Open(opts.Snapshot)
	if err != nil {
		return fail(err)
	}
	defer chain.Close()
	view, err := chain.Latest()
	if err != nil {
		return fail(err)
	}
	snap := view.Snapshot()
	if snap.Source != SnapshotSource {
		return fail(fmt.Errorf("the snapshot in %q is from %q, not a QEMU machine: %w", view.LayerPath(), snap.Source, ErrNoVMState))
	}
	state, err := ReadVMState(view.LayerPath())
	if err != nil {
		return fail(err)
	}
	if err := checkVMState(state, snap); err != nil {
		return fail(fmt.Errorf("%s: %w", view.LayerPath(), err))
	}
	// Asking the binary runs QEMU twice (tens to hundreds of ms on a busy
	// machine): it goes on while the RAM is rebuilt, and its answer is
	// waited for before anything else is created.
	binaryChecked := make(chan error, 1)
	go func() { binaryChecked <- checkBinary(binary, state) }()

	ramPath := opts.RAMPath
	if ramPath == "" {
		f, err := os.CreateTemp("/dev/shm", "hibdisk-ram-")
		if err != nil {
			return fail(fmt.Errorf("create RAM file: %w", err))
		}
		ramPath = f.Name()
		f.Close()
	}
	ramOwned := true
	defer func() {
		if ramOwned {
			os.Remove(ramPath)
		}
	}()
	ramBytes, index, err := rebuildRAM(view, ramPath, state)
	if berr := <-binaryChecked; berr != nil {
		return fail(fmt.Errorf("%s: %w", view.LayerPath(), berr))
	}
	if err != nil {
		return fail(err)
	}
	res := &ResumeResult{State: state, RAMBytes: ramBytes, Rebuild: time.Since(start)}
	chain.Close()

	cfg, disks, err := openResumeDisks(opts, state)
	if err != nil {
		return fail(err)
	}
	cfg.Binary, cfg.RAMPath = binary, ramPath
	cfg.Console, cfg.Stderr, cfg.Logger, cfg.QMPSocket = opts.Console, opts.Stderr, opts.Logger, opts.QMPSocket
	stateR, stateW, err := os.Pipe()
	if err != nil {
		closeAll(disks)
		return fail(err)
	}
	cfg.ExtraFiles = []*os.File{stateR} // fd 3 in QEMU
	cfg.incoming = true
	started := time.Now()
	m, err := Start(ctx, cfg)
	stateR.Close()
	if err != nil {
		stateW.Close()
		closeAll(disks) // Start removed the RAM file
		ramOwned = false
		return fail(err)
	}
	ramOwned = false // the machine removes it in Wait
	m.owned = disks
	m.ramIndex = index
	res.Start = time.Since(started)
	go func() {
		// Blocks until QEMU reads the stream (migrate-incoming); EPIPE
		// if QEMU dies first, which the migration status reports.
		stateW.Write(state.DeviceState)
		stateW.Close()
	}()
	migrating := time.Now()
	if err := m.incomingMigration(ctx); err != nil {
		m.Kill()
		return nil, nil, errors.Join(fmt.Errorf("resume %q: %w; qemu stderr: %s", opts.Snapshot, err, bytes.TrimSpace([]byte(m.Stderr()))), m.Wait(context.Background()))
	}
	res.Migrate = time.Since(migrating)
	res.Total = time.Since(start)
	return m, res, nil
}

func closeAll(disks []io.Closer) {
	for i := len(disks) - 1; i >= 0; i-- {
		disks[i].Close()
	}
}

// incomingMigration loads the device state from fd 3 and continues the
// guest.
func (m *Machine) incomingMigration(ctx context.Context) error {
	q := m.qmp
	if err := setIgnoreShared(ctx, q); err != nil {
		return err
	}
	if err := q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:3"}, nil); err != nil {
		return err
	}
	if err := waitMigration(ctx, q); err != nil {
		return err
	}
	// The source was stopped, so the machine ends paused.
	for {
		st, err := q.QueryStatus(ctx)
		if err != nil {
			return err
		}
		if st.Status == "paused" {
			break
		}
		if st.Status != "inmigrate" {
			return fmt.Errorf("after the incoming migration the machine is %q, want paused", st.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return q.Cont(ctx)
}

// openResumeDisks creates opts.Top over the snapshot layer and opens the
// machine's disks as recorded.
func openResumeDisks(opts ResumeOptions, state *VMState) (Config, []io.Closer, error) {
	sc := state.Config
	cfg := Config{
		Accel: sc.Accel, MachineType: state.MachineType, MemoryMiB: sc.MemoryMiB, CPUs: sc.CPUs,
		Kernel: sc.Kernel, Initrd: sc.Initrd, Append: sc.Append, ExtraArgs: sc.ExtraArgs,
	}
	var disks []io.Closer
	for i, sd := range sc.Disks {
		var d *diffdisk.Disk
		var err error
		if i == 0 {
			if err = diffdisk.Create(opts.Top, diffdisk.CreateOptions{Backing: opts.Snapshot, BackingFormat: disklayer.FormatHibdisk}); err == nil {
				d, err = diffdisk.Open(opts.Top, diffdisk.Options{})
			}
		} else {
			path := sd.Path
			if !filepath.IsAbs(path) {
				path = filepath.Join(filepath.Dir(opts.Snapshot), path)
			}
			d, err = diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
		}
		if err != nil {
			closeAll(disks)
			return Config{}, nil, fmt.Errorf("disk %q: %w", sd.Name, err)
		}
		disks = append(disks, d)
		cfg.Disks = append(cfg.Disks, Disk{Name: sd.Name, Layer: d, ReadOnly: sd.ReadOnly, Boot: sd.Boot})
	}
	return cfg, disks, nil
}

// checkVMState refuses a device state that is damaged or belongs to
// another snapshot.
func checkVMState(s *VMState, snap hibfile.Snapshot) error {
	if bad := stateProblems(s); len(bad) > 0 {
		return bad[0]
	}
	return snapshotBinding(s, snap)
}

// checkBinary refuses a device state saved by another QEMU version or
// machine type than binary offers.
func checkBinary(binary string, s *VMState) error {
	version, err := binaryVersion(binary)
	if err != nil {
		return err
	}
	if version != s.QEMUVersion {
		return fmt.Errorf("saved by QEMU %s, %s is QEMU %s: the device state only loads into the same version: %w", s.QEMUVersion, binary, version, ErrStateMismatch)
	}
	types, err := machineTypes(binary)
	if err != nil {
		return err
	}
	if !types[s.MachineType] {
		return fmt.Errorf("machine type %q (config %q) is not offered by %s (QEMU %s): %w", s.MachineType, s.Config.MachineType, binary, version, ErrStateMismatch)
	}
	return nil
}

// qemuVersion is how vm_state records the QEMU that saved it, and all
// that binaryVersion can match.
var qemuVersion = regexp.MustCompile(`^\d+\.\d+\.\d+$`)

// stateProblems lists what keeps a vm_state row from resuming on any
// QEMU, each wrapping ErrStateMismatch: a device state that does not
// match its digest, a RAM size that is not the configured guest RAM or
// that a machine snapshot cannot hold, a machine type that differs from
// the configuration's, a QEMU version that no binary reports. Resume and
// the layer check (checkVMStateRow) both use it.
func stateProblems(s *VMState) []error {
	var bad []error
	if got := digestBytes(s.DeviceState); got != s.StateDigest {
		bad = append(bad, fmt.Errorf("device state (%d bytes) has digest %s, vm_state records %s: %w", len(s.DeviceState), got, s.StateDigest, ErrStateMismatch))
	}
	if s.RAMSize != int64(s.Config.MemoryMiB)<<20 || s.RAMSize > maxRAMBytes || s.RAMSize <= 0 {
		bad = append(bad, fmt.Errorf("vm_state RAM size %d does not match %d MiB of guest RAM: %w", s.RAMSize, s.Config.MemoryMiB, ErrStateMismatch))
	}
	if s.MachineType != s.Config.MachineType {
		bad = append(bad, fmt.Errorf("machine type %q, but the config says %q: %w", s.MachineType, s.Config.MachineType, ErrStateMismatch))
	}
	if !qemuVersion.MatchString(s.QEMUVersion) {
		bad = append(bad, fmt.Errorf("QEMU version %q is not major.minor.micro: %w", s.QEMUVersion, ErrStateMismatch))
	}
	return bad
}

// snapshotBinding refuses a vm_state row that does not belong to snap,
// the snapshot a resume restores the RAM of.
func snapshotBinding(s *VMState, snap hibfile.Snapshot) error {
	if snap.Source != SnapshotSource {
		return fmt.Errorf("the snapshot is from %q, not a QEMU machine: %w", snap.Source, ErrNoVMState)
	}
	if s.SnapshotID != snap.ID {
		return fmt.Errorf("vm_state belongs to snapshot %d, the layer's snapshot is %d: %w", s.SnapshotID, snap.ID, ErrStateMismatch)
	}
	return nil
}

var versionLine = regexp.MustCompile(`version (\d+\.\d+\.\d+)`)

// binaryVersion is the major.minor.micro of a QEMU binary.
func binaryVersion(binary string) (string, error) {
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", binary, err)
	}
	m := versionLine.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version: no version in %q", binary, out)
	}
	return string(m[1]), nil
}

// machineTypes lists the machine types a QEMU binary offers.
func machineTypes(binary string) (map[string]bool, error) {
	out, err := exec.Command(binary, "-machine", "help").Output()
	if err != nil {
		return nil, fmt.Errorf("%s -machine help: %w", binary, err)
	}
	types := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var name string
		if _, err := fmt.Sscan(sc.Text(), &name); err == nil {
			types[name] = true
		}
	}
	return types, nil
}

// rebuildRAM writes the snapshot's RAM from the chain's hibernate file
// into a RAM file at path (truncated to the RAM size, holes for zero
// pages) and checks it against the digest the device state was saved
// with. It reads the rows of each layer once, straight into the file
// (hibfile.View.StoredBlocks: no composing the chain block by block),
// then hashes the file for the digest, which also gives the page index
// that lets the resumed machine's next hibernate find its changed pages
// without reading the chain. It returns the non-zero bytes written.
func rebuildRAM(view *hibfile.View, path string, s *VMState) (int64, *hibfile.PageIndex, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, nil, fmt.Errorf("rebuild RAM: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(s.RAMSize); err != nil {
		return 0, nil, fmt.Errorf("rebuild RAM: %w", err)
	}
	var written int64
	if view.BlockSize()%pageSize != 0 {
		// Not page blocks: compose the chain (the general path).
		err = verifyRAM(view, s, func(p []byte, off int64) error {
			n, err := writeRAMPages(f, p, off)
			written += n
			return err
		})
	} else {
		w := &runWriter{f: f, buf: make([]byte, 0, ramChunk)}
		err = view.StoredBlocks(s.RAMSize, func(off int64, data []byte) error {
			if data == nil || isZeroPage(data) {
				return nil // the file is truncated: a hole reads as zeros
			}
			written += int64(len(data))
			return w.write(data, off)
		})
		if err == nil {
			err = w.flush()
		}
	}
	if err != nil {
		return 0, nil, fmt.Errorf("rebuild RAM: %w", err)
	}
	index := hibfile.NewPageIndex(s.RAMSize, pageSize)
	digest, err := digestRAM(f, s.RAMSize, index)
	if err != nil {
		return 0, nil, fmt.Errorf("rebuild RAM: %w", err)
	}
	if digest != s.RAMDigest {
		return 0, nil, fmt.Errorf("the RAM in the chain's hibernate file has digest %s, the device state was saved with RAM %s: %w", digest, s.RAMDigest, ErrStateMismatch)
	}
	return written, index, nil
}

// runWriter coalesces blocks written at ascending, adjacent offsets into
// one pwrite of up to cap(buf) bytes.
type runWriter struct {
	f   *os.File
	buf []byte
	off int64 // file offset of buf[0]
}

func (w *runWriter) write(p []byte, off int64) error {
	if len(w.buf) > 0 && (off != w.off+int64(len(w.buf)) || len(w.buf)+len(p) > cap(w.buf)) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if len(w.buf) == 0 {
		w.off = off
	}
	w.buf = append(w.buf, p...)
	return nil
}

func (w *runWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.f.WriteAt(w.buf, w.off)
	w.buf = w.buf[:0]
	if err != nil {
		return fmt.Errorf("write RAM file %s: %w", w.f.Name(), err)
	}
	return nil
}

// verifyRAM reads s.RAMSize bytes of RAM from the view's hibernate file,
// passing each chunk to each (if not nil), and checks them against the
// digest the device state was saved with (ErrStateMismatch).
func verifyRAM(view *hibfile.View, s *VMState, each func(p []byte, off int64) error) error {
	d := newRAMDigest()
	buf := make([]byte, ramChunk)
	for off := int64(0); off < s.RAMSize; off += ramChunk {
		p := buf[:min(ramChunk, s.RAMSize-off)]
		if err := view.ReadBlob(p, off); err != nil {
			return err
		}
		d.add(p, off)
		if each != nil {
			if err := each(p, off); err != nil {
				return err
			}
		}
	}
	if got := d.hex(); got != s.RAMDigest {
		return fmt.Errorf("the RAM in the chain's hibernate file has digest %s, the device state was saved with RAM %s: %w", got, s.RAMDigest, ErrStateMismatch)
	}
	return nil
}
