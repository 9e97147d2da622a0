package main

import (
	"context"
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "compare", summary: "compare two images' contents (exit 0 identical, 1 different, 2 error)", run: runCompare})
}

// qemuSectorSize is QEMU's BDRV_SECTOR_SIZE, the unit qemu-img compare
// reports offsets in.
const qemuSectorSize = 512

// runCompare follows qemu-img compare: "Images are identical." and exit
// 0, or "Content mismatch at offset N!" and exit 1; errors exit 2.
func runCompare(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "compare", "A B")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	a, b, err := openTwo(pos[0], pos[1])
	if err != nil {
		return err
	}
	defer a.Close()
	defer b.Close()
	res, err := diffdisk.Compare(a, b)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	if res.SizeDiffers {
		fmt.Fprintln(e.stdout, "Warning: Image size mismatch!")
	}
	if !res.Equal {
		// qemu-img compares in 512-byte sectors and names the sector
		// that holds the first differing byte; so does this line, for
		// scripts that read either tool's.
		fmt.Fprintf(e.stdout, "Content mismatch at offset %d!\n", res.FirstDiff/qemuSectorSize*qemuSectorSize)
		return exitError{code: 1}
	}
	fmt.Fprintln(e.stdout, "Images are identical.")
	return nil
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
