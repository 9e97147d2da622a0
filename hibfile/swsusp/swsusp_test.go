package swsusp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/hibdisk/hibdisk/internal/testenv"
)

// Images the kernel wrote are parsed by test/qemu (TestSelfHibernate),
// which saves them under its temporary directory and damages copies.
// Here: the header mkswap writes, and a synthetic image in the layout
// doc.go describes, as the fuzz target's seed.

func TestMkswapHeaderIsNoImage(t *testing.T) {
	testenv.RequireTools(t, "util-linux", "mkswap")
	path := filepath.Join(t.TempDir(), "swap.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkswap", "-L", "lbl", path).CombinedOutput(); err != nil {
		t.Fatalf("mkswap: %v: %s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if h.Signature != "SWAPSPACE2" || h.SwapVersion != 1 || h.LastPage != 255 || h.Label != "lbl" || h.Hibernated() {
		t.Errorf("header %+v", h)
	}
	if _, err := Parse(bytes.NewReader(b)); !errors.Is(err, ErrNoImage) {
		t.Errorf("Parse of a plain swap area: %v, want ErrNoImage", err)
	}
}

// synthetic builds an uncompressed x86_64 image of data pages at the
// given PFNs in a swap area of pages pages, the way swsusp_write lays it
// out: map page 1, then the stream (header, one PFN page, data).
func synthetic(pfns []uint64, pages int) []byte {
	le := binary.LittleEndian
	b := make([]byte, pages*PageSize)
	copy(b[PageSize-10:], "S1SUSPEND")
	copy(b[4076:], "SWAPSPACE2")
	le.PutUint32(b[1024:], 1)
	le.PutUint32(b[1028:], uint32(pages-1))
	le.PutUint64(b[4064:], 1) // first map page
	le.PutUint32(b[4072:], FlagNoCompress)
	stream := 2 + len(pfns)
	for i := range stream {
		le.PutUint64(b[PageSize+8*i:], uint64(2+i))
	}
	info := b[2*PageSize:]
	le.PutUint64(info[24:], X86_64RestoreMagic)
	le.PutUint64(info[400:], 4096)
	le.PutUint64(info[416:], uint64(len(pfns)))
	le.PutUint64(info[424:], uint64(stream))
	le.PutUint64(info[432:], uint64(stream)*PageSize)
	meta := b[3*PageSize:]
	for i, p := range pfns {
		le.PutUint64(meta[8*i:], p)
	}
	le.PutUint64(meta[8*len(pfns):], pfnEnd)
	copy(b[4*PageSize:], "Linux version 6.1.0-test (x@y) #1 SMP\n")
	return b
}

func TestSynthetic(t *testing.T) {
	im, err := Parse(bytes.NewReader(synthetic([]uint64{7, 9, 12}, 16)))
	if err != nil {
		t.Fatal(err)
	}
	if im.Arch != "x86_64" || im.Compression() != "none" || len(im.PFNs) != 3 || im.DataPage(2) != 6 || len(im.Pages()) != 7 {
		t.Errorf("image %+v", im)
	}
	banner, err := KernelBanner(bytes.NewReader(synthetic([]uint64{7, 9, 12}, 16)), im, 10)
	if err != nil || ReleaseOf(banner) != "6.1.0-test" {
		t.Errorf("banner %q, %v", banner, err)
	}
}

func TestDamaged(t *testing.T) {
	le := binary.LittleEndian
	for name, damage := range map[string]func(b []byte){
		"orig_sig":           func(b []byte) { copy(b[4076:], "XXXXXXXXXX") },
		"map past the area":  func(b []byte) { le.PutUint64(b[4064:], 99) },
		"entry twice":        func(b []byte) { le.PutUint64(b[PageSize+8:], 2) },
		"pages vs map":       func(b []byte) { le.PutUint64(b[2*PageSize+424:], 4) },
		"pfns not ascending": func(b []byte) { le.PutUint64(b[3*PageSize+8:], 3) },
		"no arch":            func(b []byte) { le.PutUint64(b[2*PageSize+24:], 0) },
		"truncated":          nil,
	} {
		b := synthetic([]uint64{7, 9, 12}, 16)
		if damage != nil {
			damage(b)
		} else {
			b = b[:3*PageSize] // the PFN list page is missing
		}
		if _, err := Parse(bytes.NewReader(b)); !errors.Is(err, ErrDamaged) {
			t.Errorf("%s: %v, want ErrDamaged", name, err)
		}
	}
}

// FuzzParse: damaged input gives ErrNoImage or ErrDamaged, never a panic
// or another error.
func FuzzParse(f *testing.F) {
	f.Add(synthetic([]uint64{7, 9, 12}, 8), int64(0), byte(0))
	f.Add(synthetic([]uint64{1}, 6), int64(4064), byte(0xff))
	f.Fuzz(func(t *testing.T, b []byte, at int64, v byte) {
		if len(b) > 64*PageSize {
			return
		}
		if at >= 0 && at < int64(len(b)) {
			b[at] ^= v
		}
		im, err := Parse(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrNoImage) && !errors.Is(err, ErrDamaged) {
				t.Fatalf("error %v wraps neither ErrNoImage nor ErrDamaged", err)
			}
			return
		}
		if _, err := KernelBanner(bytes.NewReader(b), im, 64); err != nil {
			t.Fatalf("banner of a parsed image: %v", err)
		}
	})
}
