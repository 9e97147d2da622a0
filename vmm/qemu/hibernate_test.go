package qemu

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/hibdisk/hibdisk/disklayer/memlayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/internal/checktest"
)

// sparseRAM writes a RAM file of size bytes with the given pages (offset
// → fill byte) as data and everything else a hole, and one explicit
// all-zero data page at zeroAt.
func sparseRAM(t *testing.T, size int64, pages map[int64]byte, zeroAt int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ram")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, b := range pages {
		if _, err := f.WriteAt(bytes.Repeat([]byte{b}, pageSize), off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.WriteAt(make([]byte, pageSize), zeroAt); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRAMImageAndDigest: a RAM file reads back byte for byte through
// ramImage (holes as zeros, reads straddling holes and the end), and
// rebuilding it with writeRAMPages keeps its digest while leaving zero
// pages as holes.
func TestRAMImageAndDigest(t *testing.T) {
	const size = 64 * pageSize
	pages := map[int64]byte{0: 1, 5 * pageSize: 2, 6 * pageSize: 3, 63 * pageSize: 4}
	path := sparseRAM(t, size, pages, 10*pageSize)
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img := &ramImage{f: f, size: size}
	for _, r := range [][2]int64{{0, size}, {100, 5*pageSize + 7}, {4 * pageSize, 3 * pageSize}, {62 * pageSize, 2 * pageSize}} {
		got := bytes.Repeat([]byte{0xee}, int(r[1]))
		if n, err := img.ReadAt(got, r[0]); err != nil || n != len(got) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", r[0], r[1], n, err)
		}
		if !bytes.Equal(got, want[r[0]:r[0]+r[1]]) {
			t.Errorf("ReadAt(%d, %d) differs from the file", r[0], r[1])
		}
	}
	if n, err := img.ReadAt(make([]byte, 2*pageSize), size-pageSize); n != pageSize || err == nil {
		t.Errorf("ReadAt past the end = %d, %v; want %d, EOF", n, err, pageSize)
	}

	digest, err := hibernateDigest(path, size, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rebuilt, err := os.Create(filepath.Join(t.TempDir(), "rebuilt"))
	if err != nil {
		t.Fatal(err)
	}
	defer rebuilt.Close()
	rebuilt.Truncate(size)
	n, err := writeRAMPages(rebuilt, want, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(pages))*pageSize {
		t.Errorf("writeRAMPages wrote %d bytes, want the %d non-zero pages", n, len(pages))
	}
	if got, err := hibernateDigest(rebuilt.Name(), size, nil, nil); err != nil || got != digest {
		t.Errorf("rebuilt RAM digest %s, %v; want %s", got, err, digest)
	}
	// A changed page, or the same page at another offset, changes it.
	other := sparseRAM(t, size, map[int64]byte{0: 1, 5 * pageSize: 2, 7 * pageSize: 3, 63 * pageSize: 4}, 10*pageSize)
	if got, _ := hibernateDigest(other, size, nil, nil); got == digest {
		t.Error("moving a page does not change the RAM digest")
	}
}

func TestArgsSharedRAM(t *testing.T) {
	rw, err := memlayer.New(1<<20, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Kernel: "/k", MemoryMiB: 512, RAMPath: "/dev/shm/vm", MachineType: "pc-i440fx-7.2", incoming: true,
		Disks: []Disk{{Name: "root", Layer: rw}}}
	got, err := cfg.Args("/q.sock", "/n.sock")
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(got, " ")
	for _, want := range []string{
		"-machine pc-i440fx-7.2,memory-backend=hibdisk-ram -m 512",
		"-object memory-backend-file,id=hibdisk-ram,size=512M,mem-path=/dev/shm/vm,share=on",
		"-incoming defer",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("args lack %q:\n%s", want, line)
		}
	}
	cfg.RAMPath = "/dev/shm/a,b"
	if _, err := cfg.Args("/q.sock", "/n.sock"); err == nil {
		t.Error("a RAM path with a comma was accepted")
	}
}

// TestVMStateRoundTrip: a vm_state row written in a layer transaction
// reads back as written; a layer without one is ErrNoVMState.
func TestVMStateRoundTrip(t *testing.T) {
	dir := checktest.TempDir(t)
	path := filepath.Join(dir, "snap.db")
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	want := &VMState{
		QEMUVersion: "7.2.22", QEMUPackage: "Debian", MachineType: "pc-i440fx-7.2",
		Config: SavedConfig{Accel: "tcg", MachineType: "pc-i440fx-7.2", MemoryMiB: 64, CPUs: 1, Kernel: "/k",
			Disks: []SavedDisk{{Name: "data"}, {Name: "ro", Path: "../base.db", ReadOnly: true}}},
		// All-zero RAM (the layer stores none), so the check passes.
		CommandLine: []string{"-m", "64"}, RAMSize: 64 << 20, RAMDigest: newRAMSums(64 << 20).digest(),
		DeviceState: []byte("QEVM state"), StateDigest: digestBytes([]byte("QEVM state")),
		SavedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
	}
	uuid := f.Info().UUID // not inside Update: both take the layer's lock
	err = f.Update("test", func(tx *sqlitelayer.Tx) error {
		if err := tx.Conn().Exec(`INSERT INTO hibernate_snapshot (timestamp, total_processes, total_memory_kb, layer_uuid, source)
 VALUES ('2026-01-02T03:04:05Z', 0, 65536, '` + uuid + `', 'qemu')`); err != nil {
			return err
		}
		want.SnapshotID = tx.Conn().LastInsertRowID()
		return insertVMState(tx.Conn(), want)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := ReadVMState(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("vm_state (-written +read):\n%s", diff)
	}

	empty := filepath.Join(dir, "empty.db")
	f, err = sqlitelayer.Create(empty, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadVMState(empty); !errors.Is(err, ErrNoVMState) {
		t.Errorf("layer without vm_state: %v, want ErrNoVMState", err)
	}
}

// TestParseBelowHole: the RAM file offset where RAM above the PCI hole
// starts, from QEMU 7.2's "info mtree" of a 5 GiB pc machine.
func TestParseBelowHole(t *testing.T) {
	const tree = `address-space: memory
  0000000000000000-ffffffffffffffff (prio 0, i/o): system
    0000000000000000-00000000bfffffff (prio 0, ram): alias ram-below-4g @m 0000000000000000-00000000bfffffff
    00000000000a0000-00000000000bffff (prio 1, i/o): alias smram-region @pci 00000000000a0000-00000000000bffff
    0000000100000000-000000017fffffff (prio 0, ram): alias ram-above-4g @m 00000000c0000000-000000013fffffff
`
	if low, err := parseBelowHole(tree, 5<<30); err != nil || low != 3<<30 {
		t.Errorf("5 GiB: %d, %v; want %d", low, err, 3<<30)
	}
	if low, err := parseBelowHole("  0000000000000000-000000001fffffff (prio 0, ram): alias ram-below-4g @m 0000000000000000-000000001fffffff\n", 512<<20); err != nil || low != 512<<20 {
		t.Errorf("512 MiB: %d, %v", low, err)
	}
	s := machineSnapshot(5<<30, 3<<30, "pc-i440fx-7.2", "")
	m := s.Processes[0].Mappings
	if len(m) != 2 || m[1].VirtualAddr != 4<<30 || *m[1].PhysicalAddr != 4<<30 || *m[1].BlobOffset != 3<<30 || m[1].Size != 2<<30 || m[0].Size != 3<<30 {
		t.Errorf("memory map of a 5 GiB machine: %+v", m)
	}
}
