package qemu_test

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
	"sync"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

const (
	hibGuestMiB  = 512      // the guest RAM the numbers are for
	hibGuestData = 32 << 20 // the counter task's data kept in memory
	hibDiskSize  = 32 << 20
)

// ramFile names a RAM file on tmpfs for a machine, removed with the test
// (the machine removes it too when it ends).
func ramFile(t *testing.T) string {
	t.Helper()
	f, err := os.CreateTemp("/dev/shm", "hibdisk-test-ram-")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() { os.Remove(f.Name()) })
	return f.Name()
}

// counterParams runs the counter task on disk "data".
func counterParams() map[string]string {
	return map[string]string{"disk": "data", "seed": "hib", "mem": fmt.Sprint(hibGuestData), "interval-ms": "50"}
}

// startCounter boots the counter guest (without "quiet": the kernel's
// boot banner is on the console, so a resumed run can be told from a
// boot) with RAM in a shared file and the chain at top as disk "data".
func startCounter(t *testing.T, top string) (*qemu.Machine, *diffdisk.Disk) {
	t.Helper()
	k := guestKit(t)
	d := openDisk(t, top)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := qemu.Start(ctx, qemu.Config{
		Kernel: k.Kernel, Initrd: k.Initrd,
		Append:    guestproto.Cmdline(guestproto.TaskCounter, counterParams()),
		MemoryMiB: hibGuestMiB, RAMPath: ramFile(t),
		Disks: []qemu.Disk{{Name: "data", Layer: d}},
	})
	if err != nil {
		d.Close()
		t.Fatalf("start QEMU: %v", err)
	}
	t.Cleanup(func() {
		m.Kill()
		m.Wait(context.Background())
		d.Close()
	})
	return m, d
}

// waitCount waits for a count line of at least n and returns it.
func waitCount(t *testing.T, m *qemu.Machine, n int64) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
	defer cancel()
	var got int64
	var res guestproto.Result
	_, err := m.WaitLine(ctx, func(l string) bool {
		if res.ParseLine(l) {
			return true // FAIL
		}
		c, ok := guestproto.ParseCount(l)
		if ok && c >= n {
			got = c
		}
		return ok && c >= n
	})
	if err != nil || res.Done {
		t.Fatalf("waiting for count %d: %v (guest %q)\nconsole:\n%s\nqemu stderr:\n%s", n, err, res.Reason, tail(m.Lines(), 40), m.Stderr())
	}
	return got
}

// lastCount is the highest count on the console.
func lastCount(lines []string) (int64, bool) {
	var last int64
	found := false
	for _, l := range lines {
		if c, ok := guestproto.ParseCount(l); ok {
			last, found = max(last, c), true
		}
	}
	return last, found
}

func tail(lines []string, n int) string {
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// hibernated boots the counter guest on dir/job.db over dir/base.db,
// hibernates it at count >= 10 and returns the snapshot layer and the
// last count the guest printed.
func hibernated(t *testing.T, dir string) (string, int64) {
	t.Helper()
	base, job := filepath.Join(dir, "base.db"), filepath.Join(dir, "job.db")
	if err := diffdisk.Create(base, diffdisk.CreateOptions{Size: hibDiskSize}); err != nil {
		t.Fatal(err)
	}
	if err := diffdisk.Create(job, diffdisk.CreateOptions{Backing: base, BackingFormat: disklayer.FormatHibdisk}); err != nil {
		t.Fatal(err)
	}
	m, d := startCounter(t, job)
	waitCount(t, m, 10)
	kernel := ""
	var res guestproto.Result
	for _, l := range m.Lines() {
		res.ParseLine(l)
	}
	// The console interleaves kernel messages with the guest's lines
	// ("6.1.0-57-cloud-amd64\r[    2.31] tsc: ..."): a release has no
	// blanks, so the first field is the note.
	if f := strings.Fields(strings.ReplaceAll(res.Notes["kernel"], "\r", " ")); len(f) > 0 {
		kernel = f[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := m.Hibernate(ctx, qemu.HibernateOptions{})
	if err != nil {
		t.Fatalf("hibernate: %v\nqemu stderr: %s", err, m.Stderr())
	}
	if err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	n, ok := lastCount(m.Lines())
	if !ok {
		t.Fatal("no count before the hibernate")
	}
	t.Logf("hibernate at count %d of a %d MiB guest: stop+device state %v, save %v, total %v; RAM stored %d blocks (%.1f MiB), %d unchanged; device state %d bytes",
		n, hibGuestMiB, r.Stop, r.Save, r.Total, r.RAMBlocksStored, float64(r.RAMBytesStored())/(1<<20), r.RAMBlocksUnchanged, r.DeviceStateBytes)

	snap, err := hibfile.Latest(job)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Source != qemu.SnapshotSource || snap.TotalMemoryKB != hibGuestMiB<<10 || (kernel != "" && snap.KernelVersion != kernel) {
		t.Errorf("snapshot row: source %q, total_memory_kb %d, kernel %q; want %q, %d, %q", snap.Source, snap.TotalMemoryKB, snap.KernelVersion, qemu.SnapshotSource, hibGuestMiB<<10, kernel)
	}
	if info := layerInfo(t, job); !info.ReadOnly {
		t.Errorf("%s is not read-only after the hibernate", job)
	}
	st, err := qemu.ReadVMState(job)
	if err != nil {
		t.Fatal(err)
	}
	if st.SnapshotID != snap.ID || st.RAMSize != hibGuestMiB<<20 || !strings.HasPrefix(st.MachineType, "pc-") || len(st.DeviceState) == 0 {
		t.Errorf("vm_state: snapshot %d (want %d), RAM %d, machine %q, %d bytes of device state", st.SnapshotID, snap.ID, st.RAMSize, st.MachineType, len(st.DeviceState))
	}
	checkLayer(t, job)
	return job, n
}

func layerInfo(t *testing.T, path string) sqlitelayer.Info {
	t.Helper()
	f, err := sqlitelayer.Open(path, sqlitelayer.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Info()
}

// hibernateBlocks counts the rows and data bytes of a layer's own
// hibernate_blocks.
func hibernateBlocks(t *testing.T, path string) (rows, bytes int64) {
	t.Helper()
	db, err := sqlite3.OpenFlags(path, sqlite3.OPEN_READONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stmt, _, err := db.Prepare("SELECT count(*), coalesce(sum(length(data)), 0) FROM hibernate_blocks")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	if !stmt.Step() {
		t.Fatal(stmt.Err())
	}
	return stmt.ColumnInt64(0), stmt.ColumnInt64(1)
}

// resume resumes snapshot on a new layer top and checks that the guest
// continues counting from at least after without booting again.
func resume(t *testing.T, snapshot, top string, after int64) *qemu.Machine {
	t.Helper()
	requireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, r, err := qemu.Resume(ctx, qemu.ResumeOptions{Snapshot: snapshot, Top: top, RAMPath: ramFile(t)})
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	t.Cleanup(func() {
		m.Kill()
		m.Wait(context.Background())
	})
	t.Logf("resume of %s on %s: RAM rebuild %v (%.1f MiB non-zero), QEMU start %v, device state in and cont %v, total %v",
		filepath.Base(snapshot), filepath.Base(top), r.Rebuild, float64(r.RAMBytes)/(1<<20), r.Start, r.Migrate, r.Total)
	first := waitCount(t, m, 0)
	if first < after {
		t.Errorf("resumed guest counts %d first, want at least %d (where it was hibernated)", first, after)
	}
	if first > after+1 {
		t.Errorf("resumed guest counts %d first, want %d or %d: counts were skipped", first, after, after+1)
	}
	for _, l := range m.Lines() {
		if strings.Contains(l, "Linux version") || strings.Contains(l, guestproto.Note+"kernel=") {
			t.Errorf("the resumed guest booted again: %q", l)
		}
	}
	return m
}

// TestHibernateResumeStacked: hibernate at count N, resume on a diff
// layer (the counter goes on from N, no boot), count on, hibernate again
// into the diff layer: it stores < 10 % of guest RAM, and hibdisk diff
// between the two snapshots reports the changed pages and the disk
// blocks the guest wrote in between.
func TestHibernateResumeStacked(t *testing.T) {
	guestKit(t)
	dir := t.TempDir()
	job, n := hibernated(t, dir)
	rows1, bytes1 := hibernateBlocks(t, job)
	t.Logf("first snapshot: %d hibernate_blocks rows, %.1f MiB of RAM data (guest RAM %d MiB)", rows1, float64(bytes1)/(1<<20), hibGuestMiB)
	if bytes1 < hibGuestData {
		t.Errorf("first snapshot stores %d bytes of RAM, less than the guest's %d bytes of data", bytes1, hibGuestData)
	}
	if bytes1 > hibGuestMiB<<20/2 {
		t.Errorf("first snapshot stores %d bytes of a %d MiB guest: zero pages were stored", bytes1, hibGuestMiB)
	}

	r1 := filepath.Join(dir, "r1.db")
	m := resume(t, job, r1, n)
	waitCount(t, m, n+20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h, err := m.Hibernate(ctx, qemu.HibernateOptions{})
	if err != nil {
		t.Fatalf("second hibernate: %v", err)
	}
	if err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	n2, _ := lastCount(m.Lines())
	t.Logf("second hibernate at count %d: stop+device state %v, save %v, total %v; RAM stored %d blocks (%.2f MiB)",
		n2, h.Stop, h.Save, h.Total, h.RAMBlocksStored, float64(h.RAMBytesStored())/(1<<20))
	rows2, bytes2 := hibernateBlocks(t, r1)
	t.Logf("second snapshot: %d hibernate_blocks rows, %.2f MiB", rows2, float64(bytes2)/(1<<20))
	if limit := int64(hibGuestMiB<<20) / 10; rows2*4096 >= limit {
		t.Errorf("second snapshot holds %d hibernate blocks (%d bytes), want < 10%% of guest RAM (%d bytes)", rows2, rows2*4096, limit)
	}
	if rows2 == 0 {
		t.Errorf("second snapshot stores no RAM: the guest ran between the snapshots")
	}
	checkLayer(t, r1)

	// hibdisk diff: the hibernate file differs in some pages, the disk in
	// the counter's blocks.
	rep := hibdiskDiff(t, job, r1)
	if rep.Hibernate == nil || len(rep.Hibernate.Changed) == 0 {
		t.Errorf("hibdisk diff reports no changed hibernate pages: %+v", rep.Hibernate)
	} else if rep.Hibernate.ChangedBytes != rows2*4096 {
		t.Logf("hibernate diff: %d bytes in %d ranges (second snapshot's own rows: %d)", rep.Hibernate.ChangedBytes, len(rep.Hibernate.Changed), rows2)
	}
	// The guest wrote block c%256 for each count c in (n, n2].
	wantDisk := min(n2-n, 256) * 4096
	if rep.Disk.ChangedBytes != wantDisk && n2-n < 256 {
		t.Errorf("hibdisk diff: disk changed %d bytes, want %d (counts %d..%d)", rep.Disk.ChangedBytes, wantDisk, n+1, n2)
	}
	if got := readChain(t, r1, (n2%256)*4096, 4096); !bytes.Equal(got, guestproto.CounterBlock(n2, 4096)) {
		t.Errorf("disk block of count %d: %q", n2, bytes.TrimRight(got, "\x00"))
	}
}

type diffJSON struct {
	Disk struct {
		ChangedBytes int64 `json:"changed_bytes"`
	} `json:"disk"`
	Hibernate *struct {
		Changed      []json.RawMessage `json:"changed"`
		ChangedBytes int64             `json:"changed_bytes"`
	} `json:"hibernate"`
}

// hibdiskDiff runs hibdisk diff --json (exit 1: the images differ).
func hibdiskDiff(t *testing.T, a, b string) diffJSON {
	t.Helper()
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "diff", "--json", a, b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("hibdisk diff: %v: %s", err, stderr.String())
	}
	var rep diffJSON
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("hibdisk diff --json: %v\n%s", err, out)
	}
	return rep
}

// TestHibernateBranches: one snapshot resumed twice at once gives two
// machines that both continue from the snapshot and write to their own
// layers; the snapshot layer does not change.
func TestHibernateBranches(t *testing.T) {
	guestKit(t)
	dir := t.TempDir()
	job, n := hibernated(t, dir)
	before := fileSHA(t, job)
	tops := []string{filepath.Join(dir, "branch1.db"), filepath.Join(dir, "branch2.db")}
	machines := make([]*qemu.Machine, len(tops))
	var wg sync.WaitGroup
	for i, top := range tops {
		wg.Go(func() { machines[i] = resume(t, job, top, n) })
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	counts := make([]int64, len(machines))
	for i, m := range machines {
		counts[i] = waitCount(t, m, n+10)
	}
	for i, m := range machines {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := m.Shutdown(ctx); err != nil {
			t.Errorf("branch %d: %v", i, err)
		}
		cancel()
		counts[i], _ = lastCount(m.Lines())
	}
	for i, top := range tops {
		checkLayer(t, top)
		// Each branch's top holds the block of its own last count.
		c := counts[i]
		if got := readChain(t, top, (c%256)*4096, 4096); !bytes.Equal(got, guestproto.CounterBlock(c, 4096)) {
			t.Errorf("%s: block of count %d reads %q", filepath.Base(top), c, bytes.TrimRight(got, "\x00"))
		}
	}
	if fileSHA(t, job) != before {
		t.Errorf("the snapshot layer changed while its branches ran")
	}
}

// TestResumeRefusesTamperedState: a damaged device state, a device state
// from another QEMU version or machine type, and RAM that does not match
// the device state are all refused, and leave nothing behind.
func TestResumeRefusesTamperedState(t *testing.T) {
	guestKit(t)
	dir := t.TempDir()
	job, _ := hibernated(t, dir)
	for _, tc := range []struct {
		name, sql, want string
	}{
		{"device state", "UPDATE vm_state SET device_state = zeroblob(length(device_state))", "device state"},
		{"qemu version", "UPDATE vm_state SET qemu_version = '6.2.0'", "saved by QEMU 6.2.0"},
		{"machine type", "UPDATE vm_state SET machine_type = 'pc-i440fx-99.0'", "machine type"},
		{"ram digest", "UPDATE vm_state SET ram_digest = '" + strings.Repeat("0", 64) + "'", "the RAM in the chain"},
		{"ram", "UPDATE hibernate_blocks SET data = zeroblob(4096) WHERE block = (SELECT max(block) FROM hibernate_blocks WHERE data IS NOT NULL)", "the RAM in the chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tampered := filepath.Join(dir, "tampered-"+strings.ReplaceAll(tc.name, " ", "-")+".db")
			copyFile(t, job, tampered)
			db, err := sqlite3.Open(tampered)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Exec(tc.sql); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			top := tampered + ".resume.db"
			ram := ramFile(t)
			os.Remove(ram) // Resume makes it: left behind is then its own
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			m, _, err := qemu.Resume(ctx, qemu.ResumeOptions{Snapshot: tampered, Top: top, RAMPath: ram})
			if err == nil {
				m.Kill()
				m.Wait(context.Background())
				t.Fatal("a tampered snapshot resumed")
			}
			if !errors.Is(err, qemu.ErrStateMismatch) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("resume: %v; want ErrStateMismatch saying %q", err, tc.want)
			}
			// The top and QEMU are made while the RAM is rebuilt: a
			// refusal removes them, and the RAM file.
			for _, p := range []string{top, top + "-wal", top + "-shm", ram} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused resume left %s behind (%v)", p, err)
				}
			}
		})
	}
}

// copyFile copies a layer within its directory (so its parent reference
// still resolves) with VACUUM INTO, which takes in what is still in its
// WAL.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	db, err := sqlite3.OpenFlags(src, sqlite3.OPEN_READONLY)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stmt, _, err := db.Prepare("VACUUM INTO ?1")
	if err != nil {
		t.Fatal(err)
	}
	defer stmt.Close()
	stmt.BindText(1, dst)
	if err := stmt.Exec(); err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}
