package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
)

// Machine hibernate: the whole machine (RAM, device state, disk) into the
// top layer of the first disk, the snapshot layer.
//
//   - RAM is a shared memory-backend-file (Config.RAMPath), so it is not
//     in QEMU's migration stream (capability x-ignore-shared): hibdisk
//     reads it from the file while the guest is stopped and saves it with
//     hibfile.Save into hibernate_blocks at RAM file offsets. The memory
//     map records where they are guest-physical: the pc and q35 machines
//     map the file's first below-4g-mem-size bytes 1:1 and the rest at
//     4 GiB, above the PCI hole (machineSnapshot). Save
//     compares each block with the chain below by content, so a snapshot
//     stacked on an older one stores only the pages that changed, and
//     zero pages are never stored.
//   - The device state is QEMU's migration stream (migrate to an fd
//     passed with getfd), a few hundred KiB, stored in vm_state with its
//     digest, the QEMU version, the resolved machine type, the
//     configuration and the RAM digest it belongs to.
//   - The disks are flushed; the snapshot layer is marked read-only, and
//     the machine quits. Resume continues it on a new diff layer.
//
// The first disk must be a hibdisk layer served by the machine, and every
// other disk read-only: a snapshot is one layer, and a writable disk
// outside it would run ahead of the snapshot.

// SnapshotSource is the hibernate_snapshot source of machine snapshots.
const SnapshotSource = "qemu"

// maxRAMBytes bounds the RAM size a machine snapshot may record (a
// vm_state row claiming more is damaged).
const maxRAMBytes = 1 << 40

// pciHoleEnd is where the pc and q35 machines map the RAM that does not
// fit below the PCI hole.
const pciHoleEnd = 4 << 30

// HibernateOptions configure Hibernate.
type HibernateOptions struct {
	// KernelVersion is recorded in the snapshot row; "" takes it from a
	// "Linux version X" console line when the guest printed one.
	KernelVersion string
}

// HibernateResult says what Hibernate saved and how long each part took.
type HibernateResult struct {
	Layer      string // the snapshot layer
	SnapshotID int64
	RAMSize    int64
	// RAMBlocksStored were written into the snapshot layer's
	// hibernate_blocks (data or tombstones): pages that differ from the
	// chain below. RAMBlocksUnchanged equal it and take no space.
	RAMBlocksStored, RAMBlocksUnchanged int64
	BlockSize                           int64
	DeviceStateBytes                    int
	// Stop is stop + device state migration; Save the disk flush, RAM
	// and metadata; Total everything up to QEMU's quit.
	Stop, Save, Total time.Duration
	// The parts of Save: Flush the disks, Write the snapshot's rows and
	// RAM blocks into the open transaction (reading and comparing RAM
	// included), Digest the wait for the RAM digest after that, Commit
	// the commit (the WAL sync, and whatever the commit waits for).
	Flush, Write, Digest, Commit time.Duration
}

// RAMBytesStored is RAMBlocksStored in bytes.
func (r *HibernateResult) RAMBytesStored() int64 { return r.RAMBlocksStored * r.BlockSize }

var kernelBanner = regexp.MustCompile(`Linux version (\S+)`)

// Hibernate saves the whole machine into the top layer of its first disk
// and quits QEMU (see above). On an error before the snapshot is
// complete, the guest continues running and the layer holds no snapshot.
func (m *Machine) Hibernate(ctx context.Context, opts HibernateOptions) (_ *HibernateResult, err error) {
	start := time.Now()
	top, err := m.hibernatable()
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*HibernateResult, error) {
		return nil, fmt.Errorf("hibernate to %q: %w", top.Path(), err)
	}
	q := m.qmp
	var version struct {
		QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
		Package string                            `json:"package"`
	}
	if err := q.Execute(ctx, "query-version", nil, &version); err != nil {
		return fail(err)
	}
	machineType, err := m.resolveMachineType(ctx)
	if err != nil {
		return fail(err)
	}
	if err := setIgnoreShared(ctx, q); err != nil {
		return fail(err)
	}
	if opts.KernelVersion == "" {
		for _, l := range m.Lines() {
			if s := kernelBanner.FindStringSubmatch(l); s != nil {
				opts.KernelVersion = s[1]
				break
			}
		}
	}

	if err := q.Stop(ctx); err != nil {
		return fail(err)
	}
	saved := false
	defer func() {
		if !saved {
			// The guest goes on as if nothing happened (cont also
			// reactivates the disks a completed migration let go).
			if cerr := q.Cont(context.Background()); cerr != nil {
				err = errors.Join(err, fmt.Errorf("continue the guest after the failed hibernate: %w", cerr))
			}
		}
	}()
	state, err := m.saveDeviceState(ctx)
	if err != nil {
		return fail(err)
	}
	stopped := time.Since(start)

	// Disks: QEMU drained and flushed them on stop; make the layers
	// durable.
	flushStart := time.Now()
	for _, d := range m.cfg.Disks {
		if w, ok := d.Layer.(disklayer.Disk); ok && !readOnly(d) {
			if err := w.Flush(); err != nil {
				return fail(fmt.Errorf("flush disk %q: %w", d.Name, err))
			}
		}
	}
	flushed := time.Since(flushStart)
	ramSize := int64(m.cfg.MemoryMiB) << 20
	lowMem, err := m.belowHoleRAM(ctx, ramSize)
	if err != nil {
		return fail(err)
	}
	snap := machineSnapshot(ramSize, lowMem, machineType, opts.KernelVersion)
	ramDigest := make(chan error, 1)
	var digest string
	go func() {
		var err error
		digest, err = hibernateDigest(m.cfg.RAMPath, ramSize, m.ramSums, m.ramIndex)
		ramDigest <- err
	}()
	ramFile, err := os.Open(m.cfg.RAMPath)
	if err != nil {
		<-ramDigest
		return fail(fmt.Errorf("open RAM file: %w", err))
	}
	// The machine's own open chain takes the snapshot: a second writable
	// open of its top would be refused by the layer lock. The device
	// state commits in the snapshot's transaction: a kill leaves either
	// both or neither.
	chain, ok := m.cfg.Disks[0].Layer.(*diffdisk.Disk)
	if !ok {
		chain, err = diffdisk.Compose(diffdisk.Options{}, top)
	}
	vm := &VMState{
		QEMUVersion: fmt.Sprintf("%d.%d.%d", version.QEMU.Major, version.QEMU.Minor, version.QEMU.Micro),
		QEMUPackage: version.Package,
		MachineType: machineType,
		Config:      m.savedConfig(top.Path(), machineType),
		CommandLine: m.args,
		RAMSize:     ramSize,
		DeviceState: state,
		StateDigest: digestBytes(state),
	}
	var res hibfile.SaveResult
	digestDone := false
	writeStart := time.Now()
	var written, digested time.Time
	if err == nil {
		var index hibfile.BelowIndex // a nil interface unless resumed
		if m.ramIndex != nil {
			index = m.ramIndex
		}
		res, err = hibfile.SaveChainIndexed(chain, snap, &ramImage{f: ramFile, size: ramSize}, index, func(tx *sqlitelayer.Tx, id int64) error {
			digestDone = true
			written = time.Now()
			err := <-ramDigest
			digested = time.Now()
			if err != nil {
				return err
			}
			vm.SnapshotID, vm.RAMDigest, vm.SavedAt = id, digest, time.Now()
			if err := insertVMState(tx.Conn(), vm); err != nil {
				return err
			}
			// The snapshot, its device state and the read-only mark
			// commit together: no kill leaves a snapshot writable.
			return tx.MarkReadOnly()
		})
	}
	ramFile.Close()
	if !digestDone {
		<-ramDigest
	}
	if err != nil {
		return fail(err)
	}
	saved = true
	result := &HibernateResult{
		Layer: top.Path(), SnapshotID: res.SnapshotID, RAMSize: ramSize,
		RAMBlocksStored: res.ChangedBlocks, RAMBlocksUnchanged: res.UnchangedBlocks, BlockSize: res.BlockSize,
		DeviceStateBytes: len(state), Stop: stopped, Save: time.Since(start) - stopped,
		Flush: flushed, Write: written.Sub(writeStart), Digest: digested.Sub(written), Commit: time.Since(digested),
	}
	quitCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Shutdown(quitCtx); err != nil {
		return result, fmt.Errorf("hibernate to %q: saved, then: %w", top.Path(), err)
	}
	result.Total = time.Since(start)
	return result, nil
}

func ptr[T any](v T) *T { return &v }

// ramAboveHole matches the alias QEMU's pc and q35 machines map the RAM
// above the PCI hole with, in "info mtree": guest-physical range, then
// the backend's offset range it shows.
var ramAboveHole = regexp.MustCompile(`(?m)^\s*([0-9a-f]+)-[0-9a-f]+ \(prio -?\d+, ram\): alias ram-above-4g @\S+ ([0-9a-f]+)-[0-9a-f]+`)

// belowHoleRAM is how much of the RAM file QEMU maps 1:1 below the PCI
// hole; the rest is at pciHoleEnd. QEMU 7.2 has no QOM property for it
// (below-4g-mem-size came later), so it is read from the memory tree:
// the ram-above-4g alias's offset into the backend.
func (m *Machine) belowHoleRAM(ctx context.Context, ramSize int64) (int64, error) {
	var tree string
	if err := m.qmp.Execute(ctx, "human-monitor-command", map[string]any{"command-line": "info mtree"}, &tree); err != nil {
		return 0, fmt.Errorf("where RAM above the PCI hole is: %w", err)
	}
	return parseBelowHole(tree, ramSize)
}

// parseBelowHole reads belowHoleRAM out of "info mtree".
func parseBelowHole(tree string, ramSize int64) (int64, error) {
	sm := ramAboveHole.FindStringSubmatch(tree)
	if sm == nil {
		return ramSize, nil // all of it below the hole
	}
	gpa, err1 := strconv.ParseInt(sm[1], 16, 64)
	low, err2 := strconv.ParseInt(sm[2], 16, 64)
	if err := errors.Join(err1, err2); err != nil || gpa != pciHoleEnd || low <= 0 || low >= ramSize {
		return 0, fmt.Errorf("QEMU maps RAM above the PCI hole as %q, want RAM file offset (0, %d) at %#x: %w", sm[0], ramSize, int64(pciHoleEnd), ErrStateMismatch)
	}
	return low, nil
}

// machineSnapshot is the hibernate snapshot row of a machine with
// ramSize bytes of RAM, of which the first lowMem are mapped 1:1 and the
// rest at pciHoleEnd. The machine is one "process" whose memory map is
// guest RAM: virtual_addr and physical_addr are guest-physical addresses,
// blob_offset the RAM file offset (a resume rebuilds the file from blob
// offset 0 on).
func machineSnapshot(ramSize, lowMem int64, machineType, kernelVersion string) *hibfile.Snapshot {
	maps := []hibfile.Mapping{{
		VirtualAddr: 0, Size: lowMem, PhysicalAddr: ptr(int64(0)), PageSize: pageSize,
		Permissions: "rwxs", Flags: "guest-ram,shared", BlobOffset: ptr(int64(0)), Path: "[guest-ram]",
	}}
	if lowMem < ramSize {
		maps = append(maps, hibfile.Mapping{
			VirtualAddr: pciHoleEnd, Size: ramSize - lowMem, PhysicalAddr: ptr(int64(pciHoleEnd)), PageSize: pageSize,
			Permissions: "rwxs", Flags: "guest-ram,shared,above-4g", BlobOffset: ptr(lowMem), Path: "[guest-ram]",
		})
	}
	return &hibfile.Snapshot{
		Timestamp:     time.Now().UTC(),
		KernelVersion: kernelVersion,
		TotalMemoryKB: ramSize >> 10,
		Source:        SnapshotSource,
		Status:        hibfile.StatusComplete,
		Arch:          "x86_64",
		Processes: []hibfile.Process{{
			// The machine is the snapshot's one "process": its memory
			// map is guest RAM, stored at blob offset = RAM offset.
			PID: 1, Name: "qemu-" + machineType, State: "stopped",
			MemorySize: ramSize,
			Mappings:   maps,
		}},
	}
}

// hibernatable returns the snapshot layer, or why the machine cannot
// hibernate.
func (m *Machine) hibernatable() (*sqlitelayer.File, error) {
	bad := func(format string, args ...any) (*sqlitelayer.File, error) {
		return nil, fmt.Errorf("hibernate: "+format+": %w", append(args, disklayer.ErrInvalid)...)
	}
	if m.cfg.RAMPath == "" {
		return bad("the machine's RAM is not a shared file (Config.RAMPath)")
	}
	if len(m.cfg.Disks) == 0 {
		return bad("the machine has no disk to hold the snapshot")
	}
	var top *sqlitelayer.File
	switch l := m.cfg.Disks[0].Layer.(type) {
	case *diffdisk.Disk:
		top, _ = l.Layer(0).(*sqlitelayer.File)
	case *sqlitelayer.File:
		top = l
	}
	if top == nil || readOnly(m.cfg.Disks[0]) {
		return bad("the first disk %q must be a writable hibdisk layer served by the machine (it holds the snapshot)", m.cfg.Disks[0].Name)
	}
	for _, d := range m.cfg.Disks[1:] {
		if d.Layer == nil {
			return bad("disk %q is served elsewhere (%s): its layers cannot be recorded", d.Name, d.Socket)
		}
		if !readOnly(d) {
			return bad("disk %q is writable: only the first disk may be, its top layer holds the snapshot", d.Name)
		}
	}
	return top, nil
}

// resolveMachineType turns an alias (pc) into the versioned type QEMU
// runs (pc-i440fx-7.2), which is what a resume must ask for.
func (m *Machine) resolveMachineType(ctx context.Context) (string, error) {
	var machines []struct {
		Name  string `json:"name"`
		Alias string `json:"alias"`
	}
	if err := m.qmp.Execute(ctx, "query-machines", nil, &machines); err != nil {
		return "", err
	}
	want := m.cfg.MachineType
	for _, mt := range machines {
		if mt.Alias == want {
			return mt.Name, nil
		}
	}
	for _, mt := range machines {
		if mt.Name == want {
			return mt.Name, nil
		}
	}
	return "", fmt.Errorf("machine type %q is not in query-machines", want)
}

func setIgnoreShared(ctx context.Context, q *QMP) error {
	return q.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil)
}

// stateFDName is the name the device state's fd is given in QEMU (getfd).
const stateFDName = "hibdisk-state"

// saveDeviceState migrates the stopped machine's device state to a pipe
// and returns the stream.
func (m *Machine) saveDeviceState(ctx context.Context) ([]byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("device state pipe: %w", err)
	}
	defer r.Close()
	err = m.qmp.execute(ctx, "getfd", map[string]any{"fdname": stateFDName}, nil, unix.UnixRights(int(w.Fd())))
	w.Close() // QEMU holds its own copy; EOF when it closes it
	if err != nil {
		return nil, err
	}
	type readResult struct {
		b   []byte
		err error
	}
	read := make(chan readResult, 1)
	go func() {
		var buf bytes.Buffer
		_, err := io.Copy(&buf, r)
		read <- readResult{buf.Bytes(), err}
	}()
	if err := m.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + stateFDName}, nil); err != nil {
		m.qmp.Execute(context.Background(), "closefd", map[string]any{"fdname": stateFDName}, nil)
		return nil, err
	}
	if err := waitMigration(ctx, m.qmp); err != nil {
		m.qmp.Execute(context.Background(), "migrate_cancel", nil, nil)
		return nil, err
	}
	select {
	case res := <-read:
		if res.err != nil {
			return nil, fmt.Errorf("read device state: %w", res.err)
		}
		if len(res.b) == 0 {
			return nil, errors.New("QEMU wrote an empty device state")
		}
		return res.b, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("read device state: %w", ctx.Err())
	}
}

// waitMigration polls query-migrate until the migration (outgoing or
// incoming) has completed.
func waitMigration(ctx context.Context, q *QMP) error {
	for delay := 500 * time.Microsecond; ; delay = min(2*delay, 20*time.Millisecond) {
		var info struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := q.Execute(ctx, "query-migrate", nil, &info); err != nil {
			return err
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %q: %w", info.Status, ctx.Err())
		case <-time.After(delay):
		}
	}
}

// savedConfig records the machine's configuration for a resume: the
// snapshot disk by name only, the other disks by path relative to the
// snapshot layer.
func (m *Machine) savedConfig(snapshotLayer, machineType string) SavedConfig {
	c := m.cfg
	sc := SavedConfig{
		Accel: c.Accel, MachineType: machineType, MemoryMiB: c.MemoryMiB, CPUs: c.CPUs,
		Kernel: absPath(c.Kernel), Initrd: absPath(c.Initrd), Append: c.Append,
		ExtraArgs: c.ExtraArgs,
	}
	for i, d := range c.Disks {
		sd := SavedDisk{Name: d.Name, ReadOnly: readOnly(d), Boot: d.Boot}
		if i > 0 {
			sd.Path = layerPath(d.Layer)
			if rel, err := filepath.Rel(filepath.Dir(absPath(snapshotLayer)), absPath(sd.Path)); err == nil {
				sd.Path = rel
			}
		}
		sc.Disks = append(sc.Disks, sd)
	}
	return sc
}

func absPath(p string) string {
	if p == "" {
		return ""
	}
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// layerPath is the file of a served layer's top.
func layerPath(l disklayer.Layer) string {
	switch l := l.(type) {
	case *diffdisk.Disk:
		if f, ok := l.Layer(0).(interface{ Path() string }); ok {
			return f.Path()
		}
	case interface{ Path() string }:
		return l.Path()
	}
	return ""
}
