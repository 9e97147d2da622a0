package qemu_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
)

// TestHibernateAbove4GiB: a guest of 5 GiB, whose RAM runs past the PCI
// hole (on the pc machine, RAM above 3 GiB of the backing file sits at
// guest-physical 4 GiB and up), is hibernated and resumed through the
// CLI and goes on counting with the data it keeps in memory intact (the
// counter checks it at every count); its snapshot's memory map places
// the RAM above the hole at 4 GiB; a stacked hibernate and a second
// resume work too.
func TestHibernateAbove4GiB(t *testing.T) {
	k := guestKit(t)
	dir := t.TempDir()
	hibdisk(t, "create", "-s", fmt.Sprint(hibDiskSize), filepath.Join(dir, "job.db"))
	run := startVM(t, dir, "vm", "run", "--kernel", k.Kernel, "--initrd", k.Initrd,
		"--append", guestproto.Cmdline(guestproto.TaskCounter, counterParams()), "--mem", "5G", "data=job.db")
	run.count(t, 5)
	h := vmHibernate(t, dir, "job.db")
	run.exit(t)
	n, _ := lastCount(run.Lines())
	t.Logf("5 GiB guest hibernated at count %d: %.1f MiB stored in %.2fs", n, float64(h.Hibernate.RAMBytesStored)/(1<<20), h.Hibernate.TotalSeconds)

	// The machine is the snapshot's one process (pid 1); its map says
	// where guest-physical RAM lies in the hibernate file.
	var mappings []struct {
		PhysicalAddr int64 `json:"physical_addr"`
		Size         int64 `json:"size"`
		BlobOffset   int64 `json:"blob_offset"`
	}
	maps := hibdisk(t, "hib", "maps", "--json", filepath.Join(dir, "job.db"), "1")
	if err := json.Unmarshal([]byte(maps), &mappings); err != nil {
		t.Fatalf("hib maps --json: %v\n%s", err, maps)
	}
	var total int64
	above := false
	for _, m := range mappings {
		total += m.Size
		if m.PhysicalAddr >= 4<<30 && m.BlobOffset < m.PhysicalAddr {
			above = true
		}
	}
	if total != 5<<30 || !above {
		t.Errorf("the snapshot's memory map does not place 5 GiB with the RAM above the PCI hole at 4 GiB and up: %+v", mappings)
	}

	res := startVM(t, dir, "vm", "resume", "--top", "r1.db", "job.db")
	if first := res.count(t, 0); first < n || first > n+1 {
		t.Errorf("resumed guest counts %d first, want %d or %d", first, n, n+1)
	}
	res.count(t, n+5)
	h = vmHibernate(t, dir, "r1.db", "--continue", "--top", "r2.db")
	t.Logf("stacked: %.2f MiB stored in %.2fs", float64(h.Hibernate.RAMBytesStored)/(1<<20), h.Hibernate.TotalSeconds)
	n1, _ := lastCount(res.Lines())
	res.count(t, n1+3)
	vmHibernate(t, dir, "r2.db")
	res.exit(t)
	for _, l := range res.Lines() {
		if strings.Contains(l, "Linux version") || strings.HasPrefix(l, guestproto.Fail) {
			t.Errorf("resumed 5 GiB guest: %q", l)
		}
	}
	for _, layer := range []string{"job.db", "r1.db", "r2.db"} {
		checkLayer(t, filepath.Join(dir, layer))
	}
}
