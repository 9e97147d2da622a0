package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/hibfile/swsusp"
)

// The guest's own hibernation image (Linux swsusp) in a chain's
// hibernate file, described by hib show, hib check, hib diff, info and
// diff when the chain holds no hibdisk snapshot (package hibfile,
// OSImage).

// withSnapshotOrImage opens the chain at path and calls snap with its
// newest hibdisk snapshot or, when it has none, image with the OS
// hibernation image in its hibernate file. With neither, the error is
// the missing snapshot's.
func withSnapshotOrImage(path string, snap func(*hibfile.View) error, image func(*hibfile.Chain, *hibfile.OSImage) error) error {
	c, err := hibfile.Open(path)
	if err != nil {
		return err
	}
	defer c.Close()
	v, err := c.Latest()
	if err == nil {
		return snap(v)
	}
	if !errors.Is(err, hibfile.ErrNoSnapshot) {
		return err
	}
	o, oerr := c.OSImage()
	if errors.Is(oerr, hibfile.ErrNoOSImage) {
		return err
	}
	if oerr != nil {
		return fmt.Errorf("%q: %w", path, oerr)
	}
	return image(c, o)
}

func printOSImage(w io.Writer, o *hibfile.OSImage) {
	im := o.Image
	fmt.Fprintf(w, "layer: %s (depth %d in the chain)\n", o.Layer, o.LayerDepth)
	fmt.Fprintf(w, "source: %s\n", o.Source)
	fmt.Fprintf(w, "status: hibernated (signature %s over %s): resumable\n", im.Header.Signature, im.Header.OrigSignature)
	fmt.Fprintf(w, "kernel: %s\n", kernelText(o))
	fmt.Fprintf(w, "arch: %s\n", im.Arch)
	fmt.Fprintf(w, "memory: %d KiB (%d pages)\n", o.MemoryBytes()>>10, im.Info.NumPhysPages)
	fmt.Fprintf(w, "image: %d pages (%s): 1 header, %d PFN list, %d data pages\n",
		im.Info.Pages, formatSize(int64(im.Info.Size)), im.Info.MetaPages(), im.Info.ImagePages)
	fmt.Fprintf(w, "compression: %s (flags: %s)\n", im.Compression(), flagText(im))
	fmt.Fprintf(w, "swap area: %s version %d, %d pages, label %q, uuid %s\n",
		im.Header.OrigSignature, im.Header.SwapVersion, uint64(im.Header.LastPage)+1, im.Header.Label, im.Header.UUID)
	fmt.Fprintf(w, "stored: %d pages (%s) of the swap area: header, %d map pages, %d stream pages; at %s\n",
		1+len(im.MapPages)+len(im.Entries), formatSize(im.StoredBytes()), len(im.MapPages), len(im.Entries), rangesText(o.PageRanges, 6))
	for _, l := range o.Stored {
		fmt.Fprintf(w, "  in %s: %d pages (%s)\n", l.Layer, l.Pages, formatSize(l.Bytes))
	}
}

func kernelText(o *hibfile.OSImage) string {
	switch {
	case o.Image.Info.Release != "":
		return o.Kernel + " (from the image header)"
	case o.Kernel != "":
		return o.Kernel + " (from the kernel's banner in the image)"
	case o.Image.Compression() != "none":
		return "not recorded (x86_64 images carry no kernel name, and the banner is compressed)"
	}
	return "not recorded (x86_64 images carry no kernel name, and no banner was found)"
}

func flagText(im *swsusp.Image) string {
	if names := im.FlagNames(); len(names) > 0 {
		return strings.Join(names, ",")
	}
	return "none"
}

// rangesText prints up to n page runs ("pages 0, 1-37, ...").
func rangesText(rs [][2]int64, n int) string {
	parts := make([]string, 0, min(len(rs), n))
	for i, r := range rs {
		if i == n {
			parts = append(parts, fmt.Sprintf("... %d more runs", len(rs)-n))
			break
		}
		if r[0] == r[1] {
			parts = append(parts, fmt.Sprint(r[0]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", r[0], r[1]))
		}
	}
	return "pages " + strings.Join(parts, ", ")
}

func printOSImageDiff(w io.Writer, d *hibfile.OSImageDiff) {
	for _, c := range d.Changes {
		fmt.Fprintf(w, "~ %s image %s: %s -> %s\n", d.Source, c.Field, c.Old, c.New)
	}
	fmt.Fprintf(w, "%s image: stream %d -> %d pages, %d differ in order; %d swap pages differ",
		d.Source, d.StreamPagesA, d.StreamPagesB, d.StreamPagesChanged, d.SwapPagesChanged)
	if d.ByPFN {
		fmt.Fprintf(w, "; RAM pages by PFN: +%d -%d ~%d", d.PFNsAdded, d.PFNsRemoved, d.PFNsChanged)
	}
	fmt.Fprintln(w)
}

// checkOSImage adds what the OS hibernation image of the chain at path
// looks like to r: a note when it is sound, a problem when it is damaged.
func checkOSImage(path string, r *sqlitelayer.Report) error {
	d, err := diffdisk.OpenImage(path)
	if err != nil {
		return err
	}
	defer d.Close()
	o, err := hibfile.FindOSImage(d)
	switch {
	case errors.Is(err, swsusp.ErrDamaged):
		r.Problems = append(r.Problems, fmt.Sprintf("%s image in the hibernate file: %v", swsusp.Source, err))
		return nil
	case errors.Is(err, hibfile.ErrNoOSImage):
		return nil
	case err != nil:
		return err
	}
	im := o.Image
	r.Notes = append(r.Notes, fmt.Sprintf("%s image in the hibernate file (written into %s): %d pages, %d map pages, every page inside the %d-page swap area, %s",
		o.Source, o.Layer, im.Info.Pages, len(im.MapPages), uint64(im.Header.LastPage)+1, pfnText(im)))
	return nil
}

func pfnText(im *swsusp.Image) string {
	if im.PFNs == nil {
		return im.Compression() + "-compressed (its PFN list and crc32 are not checked)"
	}
	return fmt.Sprintf("uncompressed: %d PFNs ascending, %d zero pages", len(im.PFNs), im.ZeroPages)
}

// imageJSON is `info --json`'s "hibernate-image".
type imageJSON struct {
	Source      string `json:"source"`
	Kernel      string `json:"kernel,omitempty"`
	Arch        string `json:"arch"`
	MemoryBytes int64  `json:"memory-bytes"`
	Pages       uint64 `json:"pages"`
	Bytes       int64  `json:"bytes"`
	Compression string `json:"compression"`
}

// addImageInfo puts the chain's OS hibernation image, if any, on the
// layer it was written into. A damaged image is an error: info says so
// rather than nothing.
func addImageInfo(d *diffdisk.Disk, out []layerJSON) error {
	o, err := hibfile.FindOSImage(d)
	if errors.Is(err, hibfile.ErrNoOSImage) {
		return nil
	}
	if err != nil {
		return err
	}
	if o.LayerDepth < 0 || o.LayerDepth >= len(out) {
		return nil
	}
	im := o.Image
	out[o.LayerDepth].HibernateImage = &imageJSON{
		Source: o.Source, Kernel: o.Kernel, Arch: im.Arch, MemoryBytes: o.MemoryBytes(),
		Pages: im.Info.Pages, Bytes: int64(im.Info.Size), Compression: im.Compression(),
	}
	return nil
}
