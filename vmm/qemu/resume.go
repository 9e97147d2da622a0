package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync/atomic"
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
	// Rebuild is the time from the start of the resume until the RAM
	// file was rebuilt and matched its digest; Start is QEMU's start up
	// to QMP, which runs at the same time; Migrate is the incoming
	// device state up to the guest running; Total is all of it.
	Rebuild, Start, Migrate, Total time.Duration
}

// Resume continues a hibernated machine: it checks the snapshot's
// vm_state (its digest, the QEMU version and machine type against
// Binary), rebuilds the RAM file from the chain's hibernate file (sparse:
// zero pages stay holes) and checks it against the digest the device
// state was saved with, while it creates opts.Top over the snapshot layer
// and starts QEMU with the recorded configuration waiting for an incoming
// migration; then it feeds QEMU the device state through an inherited fd
// and continues the guest. Any mismatch is an error wrapping
// ErrStateMismatch, and leaves nothing behind: the new top, the RAM file
// and QEMU are removed.
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
	// The inputs first: a missing or unusable snapshot is the error to
	// report, whatever the new top's name.
	if _, err := os.Stat(opts.Snapshot); err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, nil, fmt.Errorf("resume: snapshot layer %q: %w", opts.Snapshot, err)
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
	if _, err := os.Lstat(opts.Top); err == nil {
		return fail(fmt.Errorf("%q exists: a resume needs a new layer: %w", opts.Top, disklayer.ErrInvalid))
	}
	// Asking the binary runs QEMU twice (tens to hundreds of ms on a busy
	// machine); then the new top is made and QEMU starts, waiting for
	// its device state, all while the RAM is rebuilt. QEMU maps the RAM
	// file, which has its final size already, and reads nothing of the
	// guest's RAM until the device state comes, which is only once the
	// rebuilt RAM matched its digest: the guest cannot see a half-built
	// RAM. (QEMU's start alone was 0.15 s for the test guest and 0.7 s
	// for the Debian guest, whose kernel and initrd it loads.)
	ramPath := opts.RAMPath
	var ramFile *os.File
	if ramPath == "" {
		ramFile, err = os.CreateTemp("/dev/shm", "hibdisk-ram-")
		if err == nil {
			ramPath = ramFile.Name()
		}
	} else {
		ramFile, err = os.OpenFile(ramPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	}
	if err != nil {
		return fail(fmt.Errorf("create RAM file: %w", err))
	}
	defer ramFile.Close()
	if err := ramFile.Truncate(state.RAMSize); err != nil {
		os.Remove(ramPath)
		return fail(fmt.Errorf("create RAM file: %w", err))
	}
	starting := make(chan startedMachine, 1)
	go func() { starting <- startResumed(ctx, opts, state, binary, ramPath, view.LayerPath()) }()
	ramBytes, index, sums, rerr := rebuildRAM(view, ramFile, state)
	rebuilt := time.Since(start)
	ramFile.Close()
	sm := <-starting
	if rerr != nil || sm.err != nil {
		err := sm.err
		if rerr != nil {
			err = rerr
		}
		if sm.m != nil {
			sm.stateW.Close()
			sm.m.Kill()
			sm.m.Wait(context.Background()) // closes the disks, frees the RAM
		}
		if sm.created {
			diffdisk.RemoveLayerFiles(opts.Top)
		}
		os.Remove(ramPath) // if Start did not get to it
		return fail(err)
	}
	chain.Close()
	m := sm.m
	m.ramIndex, m.ramSums = index, sums
	res := &ResumeResult{State: state, RAMBytes: ramBytes, Rebuild: rebuilt, Start: sm.start}
	stateW := sm.stateW
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

// startedMachine is what startResumed made: the machine waiting for its
// device state on stateW, or the error; created says the new top layer
// was made (and must be removed if the resume fails).
type startedMachine struct {
	m       *Machine
	stateW  *os.File
	start   time.Duration // QEMU's start
	created bool
	err     error
}

// startResumed checks the QEMU binary against the state, makes the new
// top and opens the machine's disks, and starts QEMU waiting for an
// incoming migration on fd 3 with its RAM in ramPath.
func startResumed(ctx context.Context, opts ResumeOptions, state *VMState, binary, ramPath, snapshotLayer string) startedMachine {
	if err := checkBinary(binary, state); err != nil {
		return startedMachine{err: fmt.Errorf("%s: %w", snapshotLayer, err)}
	}
	cfg, disks, created, err := openResumeDisks(opts, state)
	if err != nil {
		return startedMachine{err: err, created: created}
	}
	cfg.Binary, cfg.RAMPath = binary, ramPath
	cfg.Console, cfg.Stderr, cfg.Logger, cfg.QMPSocket = opts.Console, opts.Stderr, opts.Logger, opts.QMPSocket
	stateR, stateW, err := os.Pipe()
	if err != nil {
		closeAll(disks)
		return startedMachine{err: err, created: true}
	}
	cfg.ExtraFiles = []*os.File{stateR} // fd 3 in QEMU
	cfg.incoming = true
	started := time.Now()
	m, err := Start(ctx, cfg)
	stateR.Close()
	if err != nil {
		stateW.Close()
		closeAll(disks)
		return startedMachine{err: err, created: true}
	}
	m.owned = disks // the machine closes them in Wait
	return startedMachine{m: m, stateW: stateW, start: time.Since(started), created: true}
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
// machine's disks as recorded; created says opts.Top was made (also when
// an error came after that).
func openResumeDisks(opts ResumeOptions, state *VMState) (_ Config, _ []io.Closer, created bool, _ error) {
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
				created = true
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
			return Config{}, nil, created, fmt.Errorf("disk %q: %w", sd.Name, err)
		}
		disks = append(disks, d)
		cfg.Disks = append(cfg.Disks, Disk{Name: sd.Name, Layer: d, ReadOnly: sd.ReadOnly, Boot: sd.Boot})
	}
	return cfg, disks, created, nil
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
// into the RAM file f (already s.RAMSize bytes of holes; zero pages stay
// holes) and checks it against the digest the device state was saved
// with. It reads the rows of each layer once, merged in block order
// (hibfile.View.StoredBlocks: no composing the chain block by block),
// and a second goroutine writes the runs of data to the file and hashes
// them as they come: the digest, and the page index that lets the
// resumed machine's next hibernate find its changed pages without
// reading the chain. It returns the non-zero bytes written.
func rebuildRAM(view *hibfile.View, f *os.File, s *VMState) (int64, *hibfile.PageIndex, *ramSums, error) {
	if view.BlockSize()%pageSize != 0 {
		// Not page blocks: compose the chain (the general path).
		var written int64
		index := hibfile.NewPageIndex(s.RAMSize, pageSize)
		sums, err := verifyRAM(view, s, func(p []byte, off int64) error {
			n, err := writeRAMPages(f, p, off)
			written += n
			index.Add(p, off)
			return err
		})
		if err != nil {
			return 0, nil, nil, fmt.Errorf("rebuild RAM: %w", err)
		}
		return written, index, sums, nil
	}
	p := newRAMWriter(f, s.RAMSize, s.RAMDigest)
	err := view.StoredBlocks(s.RAMSize, func(off int64, data []byte) error {
		if data == nil || isZeroPage(data) {
			return nil // a hole reads as zeros
		}
		return p.write(data, off)
	})
	written, index, werr := p.close()
	if werr != nil {
		err = werr // the cause of a failed write, not the early stop
	}
	if err != nil {
		return 0, nil, nil, fmt.Errorf("rebuild RAM: %w", err)
	}
	if digest := p.verifier.digest(); digest != s.RAMDigest {
		return 0, nil, nil, fmt.Errorf("the RAM in the chain's hibernate file has digest %s, the device state was saved with RAM %s: %w", digest, s.RAMDigest, ErrStateMismatch)
	}
	return written, index, p.verifier.sums, nil
}

// ramWriter gathers blocks written at ascending offsets into runs of up
// to ramChunk bytes, and a goroutine of its own writes each run to the
// RAM file and adds it to the RAM digest and the page index, while the
// caller reads the next rows: on two cores the hashing costs no time.
type ramWriter struct {
	f      *os.File
	run    []byte // the run being gathered
	off    int64  // its file offset
	runs   chan ramRun
	free   chan []byte // buffers the goroutine is done with
	done   chan struct{}
	failed atomic.Bool // the goroutine failed: stop early

	// Set by the goroutine, read after done.
	written  int64
	verifier *ramVerifier
	index    *hibfile.PageIndex
	err      error
}

type ramRun struct {
	p   []byte
	off int64
}

// ramWriterBuffers is how many runs may be in flight (one being
// gathered, the others queued or being written).
const ramWriterBuffers = 3

// newRAMWriter writes a RAM of size bytes into f, computing its digest in
// the form of want.
func newRAMWriter(f *os.File, size int64, want string) *ramWriter {
	w := &ramWriter{
		f: f, runs: make(chan ramRun, ramWriterBuffers), free: make(chan []byte, ramWriterBuffers),
		done: make(chan struct{}), verifier: newRAMVerifier(want, size), index: hibfile.NewPageIndex(size, pageSize),
	}
	for range ramWriterBuffers - 1 {
		w.free <- make([]byte, 0, ramChunk)
	}
	w.run = make([]byte, 0, ramChunk)
	go w.drain()
	return w
}

func (w *ramWriter) drain() {
	defer close(w.done)
	for r := range w.runs {
		if w.err == nil {
			if _, err := w.f.WriteAt(r.p, r.off); err != nil {
				w.err = fmt.Errorf("write RAM file %s: %w", w.f.Name(), err)
				w.failed.Store(true)
			} else {
				w.written += int64(len(r.p))
				w.verifier.add(r.p, r.off)
				w.index.Add(r.p, r.off)
			}
		}
		w.free <- r.p[:0]
	}
}

// write adds p (whole pages, not all zero) at off, above every earlier
// write.
func (w *ramWriter) write(p []byte, off int64) error {
	if len(w.run) > 0 && (off != w.off+int64(len(w.run)) || len(w.run)+len(p) > cap(w.run)) {
		if err := w.send(); err != nil {
			return err
		}
	}
	if len(w.run) == 0 {
		w.off = off
	}
	w.run = append(w.run, p...)
	return nil
}

func (w *ramWriter) send() error {
	if w.failed.Load() {
		return errors.New("RAM writer failed") // close reports the cause
	}
	w.runs <- ramRun{w.run, w.off}
	w.run = <-w.free
	return nil
}

// close writes what is gathered, waits for the goroutine and returns the
// bytes written and the page index (w.verifier has the digest).
func (w *ramWriter) close() (int64, *hibfile.PageIndex, error) {
	if len(w.run) > 0 {
		w.send()
	}
	close(w.runs)
	<-w.done
	if w.err != nil {
		return 0, nil, w.err
	}
	return w.written, w.index, nil
}

// verifyRAM reads s.RAMSize bytes of RAM from the view's hibernate file,
// passing each chunk to each (if not nil), and checks them against the
// digest the device state was saved with (ErrStateMismatch). It returns
// the page sums.
func verifyRAM(view *hibfile.View, s *VMState, each func(p []byte, off int64) error) (*ramSums, error) {
	v := newRAMVerifier(s.RAMDigest, s.RAMSize)
	buf := make([]byte, ramChunk)
	for off := int64(0); off < s.RAMSize; off += ramChunk {
		p := buf[:min(ramChunk, s.RAMSize-off)]
		if err := view.ReadBlob(p, off); err != nil {
			return nil, err
		}
		v.add(p, off)
		if each != nil {
			if err := each(p, off); err != nil {
				return nil, err
			}
		}
	}
	if got := v.digest(); got != s.RAMDigest {
		return nil, fmt.Errorf("the RAM in the chain's hibernate file has digest %s, the device state was saved with RAM %s: %w", got, s.RAMDigest, ErrStateMismatch)
	}
	return v.sums, nil
}
