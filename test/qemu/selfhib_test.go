package qemu_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/hibfile/swsusp"
	"github.com/hibdisk/hibdisk/internal/testenv"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
)

// A guest that hibernates itself with Linux's swsusp into its layer's
// hibernate file, attached by `vm run --hibernate-disk`.
const (
	selfHibGuestMiB = 256
	selfHibSwapSize = 256 << 20 // mkswap's size: room for an uncompressed image
	selfHibDisk     = "hib"     // the hibernate disk's serial
)

// mkswapHeader runs the real mkswap on a sparse file of size bytes and
// returns its header page (mkswap writes nothing else).
func mkswapHeader(t *testing.T, size int64) []byte {
	t.Helper()
	testenv.RequireTools(t, "util-linux", "mkswap")
	path := filepath.Join(t.TempDir(), "swap.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkswap", "-L", "hibdisk-swap", path).CombinedOutput(); err != nil {
		t.Fatalf("mkswap: %v: %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range b[4096:] {
		if c != 0 {
			t.Fatalf("mkswap wrote beyond its header page (byte %d)", 4096+i)
		}
	}
	return b[:4096]
}

// writeHibernateFile writes p at off into the hibernate file of the chain
// at path.
func writeHibernateFile(t *testing.T, path string, p []byte, off int64) {
	t.Helper()
	d, err := diffdisk.Open(path, diffdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := d.Hibernate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// selfHibRun boots the self-hibernating guest on the chain at top with its
// hibernate file as a disk, waits for the machine to end and returns the
// console.
func selfHibRun(t *testing.T, dir, top, appendArgs string, params map[string]string) []string {
	t.Helper()
	k := guestKit(t)
	started := time.Now()
	p := startVM(t, dir, "vm", "run", "--kernel", k.Kernel, "--initrd", k.Initrd,
		"--append", appendArgs+" "+guestproto.Cmdline(guestproto.TaskSelfHibernate, params),
		"--mem", fmt.Sprintf("%dM", selfHibGuestMiB), "--hibernate-disk", selfHibDisk, "data="+top)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("hibdisk vm run: %v\nconsole:\n%s\nstderr:\n%s", err, tail(p.Lines(), 40), p.stderr.String())
		}
	case <-time.After(3 * guestTimeout):
		t.Fatalf("guest still running after %v\nconsole:\n%s", 3*guestTimeout, tail(p.Lines(), 40))
	}
	lines := p.Lines()
	t.Logf("%s: machine ended after %v", top, time.Since(started).Round(time.Millisecond))
	for _, l := range lines {
		if strings.Contains(l, guestproto.Fail) {
			t.Fatalf("guest failed: %s\nconsole:\n%s", l, tail(lines, 40))
		}
	}
	return lines
}

func hasNote(lines []string, key string, value any) bool {
	want := guestproto.FormatNote(key, value)
	for _, l := range lines {
		if strings.Contains(l, want) {
			return true
		}
	}
	return false
}

// TestSelfHibernate: Linux hibernates itself (swsusp) into its layer's
// hibernate file, attached with `vm run --hibernate-disk` over a swap
// header made by mkswap; a second boot on a diff layer resumes from it
// and hibernates again into the diff layer, which stores only the pages
// that changed; a third boot resumes from that and finishes the count.
// Uncompressed (hibernate=nocompress) and with the default LZO.
func TestSelfHibernate(t *testing.T) {
	for _, mode := range []struct{ name, append, compression string }{
		{"nocompress", "hibernate=nocompress", "none"},
		{"lzo", "", "lzo"},
	} {
		t.Run(mode.name, func(t *testing.T) { selfHibernate(t, mode.append, mode.compression) })
	}
}

func selfHibernate(t *testing.T, appendArgs, compression string) {
	k := guestKit(t)
	dir := t.TempDir()
	job := filepath.Join(dir, "job.db")
	hibdisk(t, "create", "-s", "32M", job)
	writeHibernateFile(t, job, mkswapHeader(t, selfHibSwapSize), 0)
	params := map[string]string{"hib": selfHibDisk, "seed": "self", "count": "15", "every": "5"}

	lines := selfHibRun(t, dir, "job.db", appendArgs, params)
	if !hasNote(lines, "booted", 1) || !hasNote(lines, "hibernating", 5) || hasNote(lines, "resumed", 5) {
		t.Fatalf("first boot: want booted, hibernating=5 and no resume\n%s", tail(lines, 30))
	}
	o1 := osImage(t, job)
	checkKernelImage(t, o1, compression, k.Release)
	if o1.Layer != job || o1.LayerDepth != 0 {
		t.Errorf("image 1 lies in %s (depth %d), want %s", o1.Layer, o1.LayerDepth, job)
	}
	parseSavedImage(t, job, o1)
	show := hibdisk(t, "hib", "show", job)
	for _, want := range []string{"source: linux-swsusp", "compression: " + compression, "status: hibernated"} {
		if !strings.Contains(show, want) {
			t.Errorf("hib show: no %q in\n%s", want, show)
		}
	}
	if out := hibdisk(t, "hib", "check", job); !strings.Contains(out, "linux-swsusp image in the hibernate file") {
		t.Errorf("hib check: no note of the image:\n%s", out)
	}

	r1 := filepath.Join(dir, "r1.db")
	hibdisk(t, "create", "-b", job, "-F", "hibdisk", r1)
	params["expect-resume"] = "1"
	lines = selfHibRun(t, dir, "r1.db", appendArgs, params)
	if hasNote(lines, "booted", 1) || !hasNote(lines, "resumed", 5) || !hasNote(lines, "hibernating", 10) {
		t.Fatalf("second boot: want a resume at 5 and hibernating=10\n%s", tail(lines, 30))
	}
	o2 := osImage(t, r1)
	checkKernelImage(t, o2, compression, k.Release)
	if o2.Layer != r1 {
		t.Errorf("image 2 lies in %s, want %s", o2.Layer, r1)
	}
	first, stacked := hibernateBytes(t, job), hibernateBytes(t, r1)
	t.Logf("%s: image 1 %d pages (%.1f MiB) stored %.1f MiB in job.db; image 2 %d pages (%.1f MiB) stored %.1f MiB in r1.db (%d of its pages there)",
		compression, o1.Image.Info.Pages, float64(o1.Image.Info.Size)/(1<<20), float64(first)/(1<<20),
		o2.Image.Info.Pages, float64(o2.Image.Info.Size)/(1<<20), float64(stacked)/(1<<20), o2.Stored[0].Pages)
	// Uncompressed, the pages of RAM that did not change are rewritten
	// as they were wherever the stream did not shift; compressed chunks
	// rarely come out the same.
	if compression == "none" && stacked >= o2.Image.StoredBytes() {
		t.Errorf("r1.db stores %d bytes, not less than image 2's %d: nothing was shared with job.db", stacked, o2.Image.StoredBytes())
	}
	// hib diff exits 1 when the images differ, as diff(1) does.
	diff, stderr, err := hibdiskTry(t, "hib", "diff", job, r1)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("hib diff job.db r1.db: %v (want exit 1: they differ): %s", err, stderr)
	}
	t.Logf("hib diff job.db r1.db: %s", diff)
	if !strings.Contains(diff, "linux-swsusp image: stream") {
		t.Errorf("hib diff: %s", diff)
	}
	if info := hibdisk(t, "info", "--backing-chain", r1); !strings.Contains(info, "hibernate image: linux-swsusp") {
		t.Errorf("info: no hibernate image in\n%s", info)
	}

	r2 := filepath.Join(dir, "r2.db")
	hibdisk(t, "create", "-b", r1, "-F", "hibdisk", r2)
	lines = selfHibRun(t, dir, "r2.db", appendArgs, params)
	if !hasNote(lines, "resumed", 10) || !strings.Contains(strings.Join(lines, "\n"), guestproto.Pass) {
		t.Fatalf("third boot: want a resume at 10 and PASS\n%s", tail(lines, 30))
	}
	if n, _ := lastCount(lines); n != 15 {
		t.Errorf("third boot counted to %d, want 15", n)
	}
	// The resume consumed image 2: the kernel put the swap signature back.
	if out := hibdisk(t, "hib", "check", r2); strings.Contains(out, "linux-swsusp image") {
		t.Errorf("image 2 still there after the resume from it:\n%s", out)
	}
	for _, l := range []string{job, r1, r2} {
		checkLayer(t, l)
	}
}

func osImage(t *testing.T, path string) *hibfile.OSImage {
	t.Helper()
	c, err := hibfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o, err := c.OSImage()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return o
}

// checkKernelImage checks what the kernel wrote against what the guest
// is: x86_64, 256 MiB of RAM, the compression asked for.
func checkKernelImage(t *testing.T, o *hibfile.OSImage, compression, release string) {
	t.Helper()
	im := o.Image
	if o.Source != swsusp.Source || im.Arch != "x86_64" || im.Compression() != compression {
		t.Errorf("image: source %s arch %s compression %s", o.Source, im.Arch, im.Compression())
	}
	if mem := o.MemoryBytes(); mem > selfHibGuestMiB<<20 || mem < selfHibGuestMiB<<20*3/4 {
		t.Errorf("image says %d bytes of RAM, the guest has %d MiB", mem, selfHibGuestMiB)
	}
	if im.Header.OrigSignature != "SWAPSPACE2" || im.Header.Label != "hibdisk-swap" || im.Header.LastPage != selfHibSwapSize/4096-1 {
		t.Errorf("swap header: %+v", im.Header)
	}
	switch compression {
	case "none":
		if uint64(len(im.Entries)) != im.Info.Pages || uint64(len(im.PFNs)) != im.Info.ImagePages {
			t.Errorf("uncompressed image: %d entries, %d PFNs, header %+v", len(im.Entries), len(im.PFNs), im.Info)
		}
		if o.Kernel != release {
			t.Errorf("kernel %q (banner %q), want %q", o.Kernel, o.Banner, release)
		}
	default:
		if im.Header.Flags&swsusp.FlagCRC32 == 0 || uint64(len(im.Entries)) >= im.Info.Pages {
			t.Errorf("compressed image: flags %v, %d entries for %d pages", im.FlagNames(), len(im.Entries), im.Info.Pages)
		}
	}
}

// parseSavedImage copies the image's pages out of the layer into a file
// of the test's temporary directory and runs the parser on that file and
// on damaged copies of it.
func parseSavedImage(t *testing.T, layer string, o *hibfile.OSImage) {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "image.raw")
	saveImage(t, layer, o.Image, raw)
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	im, err := swsusp.Parse(f)
	f.Close()
	if err != nil {
		t.Fatalf("parse %s: %v", raw, err)
	}
	if im.Info != o.Image.Info || len(im.Entries) != len(o.Image.Entries) || len(im.PFNs) != len(o.Image.PFNs) {
		t.Errorf("the saved image parses differently: %+v vs %+v", im.Info, o.Image.Info)
	}
	firstMap := o.Image.Header.FirstMapPage * 4096
	for _, c := range []struct {
		name string
		off  int64
		val  uint64
	}{
		{"first map page past the area", 4064, 1 << 40},
		{"map entry outside the area", firstMap, 1 << 62},
		{"next_swap loops to itself", firstMap + 8*511, uint64(o.Image.Header.FirstMapPage)},
		{"pages in swsusp_info", o.Image.Entries[0]*4096 + 424, 7},
	} {
		damagedCopy := filepath.Join(t.TempDir(), "damaged.raw")
		copySparse(t, raw, damagedCopy)
		patch(t, damagedCopy, c.off, c.val)
		f, err := os.Open(damagedCopy)
		if err != nil {
			t.Fatal(err)
		}
		_, err = swsusp.Parse(f)
		f.Close()
		if !errors.Is(err, swsusp.ErrDamaged) {
			t.Errorf("%s: parse error %v, want ErrDamaged", c.name, err)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
}

// saveImage writes the pages the image occupies, read through the chain,
// into a sparse file at their offsets.
func saveImage(t *testing.T, layer string, im *swsusp.Image, dst string) {
	t.Helper()
	d, err := diffdisk.OpenImage(layer)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	h, err := d.Hibernate()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, 4096)
	for _, p := range im.Pages() {
		if _, err := h.ReadAt(page, p*4096); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(page, p*4096); err != nil {
			t.Fatal(err)
		}
	}
}

func copySparse(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

func patch(t *testing.T, path string, off int64, v uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
}

// hibernateBytes is what the layer itself stores of the hibernate file.
func hibernateBytes(t *testing.T, layer string) int64 {
	t.Helper()
	var info []struct {
		SectorSize      int64 `json:"sector-size"`
		HibernateBlocks int64 `json:"hibernate-blocks"`
	}
	if err := json.Unmarshal([]byte(hibdisk(t, "info", "--json", layer)), &info); err != nil {
		t.Fatal(err)
	}
	return info[0].HibernateBlocks * info[0].SectorSize
}
