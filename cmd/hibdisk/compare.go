package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
)

func init() {
	register(command{name: "compare", summary: "compare two images' contents (exit 0 identical, 1 different, 2 error)", run: runCompare})
}

// qemuSectorSize is QEMU's BDRV_SECTOR_SIZE, the unit qemu-img compare
// reports offsets in.
const qemuSectorSize = 512

// compareJSON is `hibdisk compare --output=json`. identical is the
// verdict (exit 0); first-difference is the offset qemu-img names (the
// 512-byte sector holding the first differing byte), absent when
// identical; mismatch says what differs: "content", or in strict mode
// "size" or "allocation". Stable: fields are only added.
type compareJSON struct {
	Image1          string `json:"image1"`
	Image2          string `json:"image2"`
	Format1         string `json:"format1"`
	Format2         string `json:"format2"`
	Size1           int64  `json:"size1"`
	Size2           int64  `json:"size2"`
	Strict          bool   `json:"strict"`
	Identical       bool   `json:"identical"`
	Mismatch        string `json:"mismatch,omitempty"`
	FirstDifference *int64 `json:"first-difference,omitempty"`
}

// runCompare follows qemu-img compare: "Images are identical." and exit
// 0, or "Content mismatch at offset N!" and exit 1; errors exit 2. With
// -s (strict), images of different sizes, or a range allocated in one
// image and not in the other, differ too.
func runCompare(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "compare", "[-s] [-p] [-q] [-f FMT] [-F FMT] [-U] [--output=human|json] A B")
	var f imgFlags
	f.addFormat(fs, "of A: hibdisk, raw, nbd, openvmm, qcow2, vmdk, vhdx, vpc, vdi, ...")
	f.addOutput(fs, "json: one object describing the result")
	f.addQuiet(fs)
	f.addShare(fs)
	formatB := fs.String("F", "", "B's format, checked like -f (default: detected)")
	strict := fs.Bool("s", false, "strict: a size mismatch or a range allocated in only one image is a difference")
	progress := fs.Bool("p", false, "show progress (on a terminal only)")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	if err := f.done(e); err != nil {
		return exitError{code: 2, err: err}
	}
	if *formatB != "" && !isInputFormat(*formatB) {
		return exitError{code: 2, err: usagef("-F %s: want one of %s", *formatB, inputFormatList())}
	}
	out := compareJSON{Image1: pos[0], Image2: pos[1], Strict: *strict}
	if out.Format1, err = checkFormat("-f", f.format, pos[0]); err != nil {
		return exitError{code: 2, err: err}
	}
	if out.Format2, err = checkFormat("-F", *formatB, pos[1]); err != nil {
		return exitError{code: 2, err: err}
	}
	a, b, err := openTwo(pos[0], pos[1])
	if err != nil {
		return err
	}
	defer a.Close()
	defer b.Close()
	out.Size1, out.Size2 = a.Size(), b.Size()
	finish := func(line string) error {
		if f.json {
			if err := writeJSON(e.stdout, out); err != nil {
				return exitError{code: 2, err: err}
			}
		} else {
			fmt.Fprintln(e.stdout, line)
		}
		if !out.Identical {
			return exitError{code: 1}
		}
		return nil
	}
	if *strict && a.Size() != b.Size() {
		out.Mismatch = "size"
		return finish("Strict mode: Image size mismatch!")
	}
	var report func(done, total int64)
	if *progress {
		p := newProgress(e)
		report = p.update
		defer p.done()
	}
	res, err := diffdisk.CompareWith(a, b, report)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	allocDiff := int64(-1)
	if *strict {
		if allocDiff, err = firstAllocationDiff(a, b); err != nil {
			return exitError{code: 2, err: err}
		}
	}
	// qemu-img walks both images in order and checks allocation before
	// content at each offset: the earlier difference is the one named.
	if allocDiff >= 0 && (res.Equal || allocDiff <= res.FirstDiff) {
		out.Mismatch = "allocation"
		out.FirstDifference = &allocDiff
		return finish(fmt.Sprintf("Strict mode: Offset %d block status mismatch!", allocDiff))
	}
	if res.SizeDiffers && !f.json {
		fmt.Fprintln(e.stdout, "Warning: Image size mismatch!")
	}
	if !res.Equal {
		// qemu-img compares in 512-byte sectors and names the sector
		// that holds the first differing byte; so does this line, for
		// scripts that read either tool's.
		off := res.FirstDiff / qemuSectorSize * qemuSectorSize
		out.Mismatch, out.FirstDifference = "content", &off
		return finish(fmt.Sprintf("Content mismatch at offset %d!", off))
	}
	out.Identical = true
	return finish("Images are identical.")
}

// firstAllocationDiff is the first offset (of the common size) that one
// image's chain stores (data or a zero tombstone) and the other's does
// not, or -1: qemu-img compare -s's "block status mismatch".
func firstAllocationDiff(a, b *diffdisk.Disk) (int64, error) {
	ma, err := diffdisk.Map(a)
	if err != nil {
		return 0, err
	}
	mb, err := diffdisk.Map(b)
	if err != nil {
		return 0, err
	}
	end := min(a.Size(), b.Size())
	i, j := 0, 0
	for i < len(ma) && j < len(mb) {
		ra, rb := ma[i], mb[j]
		lo := max(ra.Start, rb.Start)
		if lo >= end {
			break
		}
		if (ra.Kind != disklayer.Absent) != (rb.Kind != disklayer.Absent) {
			return lo, nil
		}
		if ra.Start+ra.Length <= rb.Start+rb.Length {
			i++
		} else {
			j++
		}
	}
	return -1, nil
}

// openTwo opens the two images a comparing command reads (any chain or
// raw image, read-only). Failing to open one exits 2, like a failed
// comparison.
func openTwo(pathA, pathB string) (a, b *diffdisk.Disk, err error) {
	if a, err = diffdisk.OpenImage(pathA); err != nil {
		return nil, nil, exitError{code: 2, err: err}
	}
	if b, err = diffdisk.OpenImage(pathB); err != nil {
		a.Close()
		return nil, nil, exitError{code: 2, err: err}
	}
	return a, b, nil
}
