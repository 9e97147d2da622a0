package hibfile

import (
	"errors"
	"fmt"
	"slices"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile/swsusp"
)

// An OS image is a hibernation image the guest's own operating system
// wrote into the chain's hibernate file (attached to the guest as a disk):
// today Linux swsusp. It is described from its own bytes whenever it is
// asked for, never recorded as rows: the image is its own record, the
// kernel rewrites its signature when it resumes from it (the image is
// then gone, and a row would lie), and the commands that describe it
// are read-only.

// ErrNoOSImage: the chain's hibernate file holds no OS hibernation image.
var ErrNoOSImage = swsusp.ErrNoImage

// bannerPages bounds how many data pages OSImage reads looking for the
// kernel's banner (uncompressed images only).
const bannerPages = 1 << 16

// OSImage is an OS hibernation image found in a chain's hibernate file.
type OSImage struct {
	Source string        `json:"source"`
	Image  *swsusp.Image `json:"image"`
	// Kernel is the kernel's release, from the image header where the
	// architecture records it, else from the kernel's banner in an
	// uncompressed image; "" when the image does not say.
	Kernel string `json:"kernel,omitempty"`
	// Banner is the kernel's linux_banner when found.
	Banner string `json:"banner,omitempty"`
	// Layer is the file of the topmost layer that stores the header page:
	// the layer the image was written into.
	Layer      string `json:"layer"`
	LayerDepth int    `json:"layer_depth"`
	// Stored is, per layer of the chain (top first), how many of the
	// image's pages that layer stores: a layer above an older image
	// stores only the pages whose content changed.
	Stored []LayerPages `json:"stored"`
	// PageRanges are the swap pages the image occupies (header, map and
	// stream), as inclusive [first, last] runs.
	PageRanges [][2]int64 `json:"page_ranges"`
}

// LayerPages is how many pages of an image one layer stores.
type LayerPages struct {
	Layer string `json:"layer"`
	Pages int    `json:"pages"`
	Bytes int64  `json:"bytes"`
}

// MemoryBytes is the guest's RAM as the image states it (num_physpages).
func (o *OSImage) MemoryBytes() int64 { return int64(o.Image.Info.NumPhysPages) * swsusp.PageSize }

// OSImage looks for an OS hibernation image in the chain's hibernate
// file. No image is an error wrapping ErrNoOSImage; a damaged one wraps
// swsusp.ErrDamaged.
func (c *Chain) OSImage() (*OSImage, error) {
	h, err := c.hibernate()
	if err != nil {
		return nil, err
	}
	return findOSImage(c.disk, h)
}

// hibernate takes the chain's hibernate file view once (a chain's view
// can be taken once: closing it releases the layers' tables).
func (c *Chain) hibernate() (*diffdisk.Disk, error) {
	if c.hib == nil {
		h, err := hibernateOf(c.disk)
		if err != nil {
			return nil, err
		}
		c.hib = h
	}
	return c.hib, nil
}

func hibernateOf(d *diffdisk.Disk) (*diffdisk.Disk, error) {
	h, err := d.Hibernate()
	if errors.Is(err, disklayer.ErrNotLayer) {
		return nil, fmt.Errorf("%w: a raw image has no hibernate file", ErrNoOSImage)
	}
	return h, err
}

// FindOSImage is Chain.OSImage for a chain opened elsewhere. It takes d's
// hibernate file view (d.Hibernate), which a chain gives once.
func FindOSImage(d *diffdisk.Disk) (*OSImage, error) {
	h, err := hibernateOf(d)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return findOSImage(d, h)
}

// findOSImage parses the image in h, the hibernate file of d.
func findOSImage(d, h *diffdisk.Disk) (*OSImage, error) {
	im, err := swsusp.Parse(h)
	if err != nil {
		return nil, fmt.Errorf("hibernate file: %w", err)
	}
	o := &OSImage{Source: swsusp.Source, Image: im, Kernel: im.Info.Release}
	if o.Banner, err = swsusp.KernelBanner(h, im, bannerPages); err != nil {
		return nil, fmt.Errorf("hibernate file: %w", err)
	}
	if o.Kernel == "" && o.Banner != "" {
		o.Kernel = swsusp.ReleaseOf(o.Banner)
	}
	if err := o.locate(d, h); err != nil {
		return nil, fmt.Errorf("hibernate file: %w", err)
	}
	return o, nil
}

// locate fills Layer and Stored: which layer stores each of the image's
// pages (the topmost that has a row for it). Layer i of h, the hibernate
// file, is the hibernate table of layer i of d.
func (o *OSImage) locate(d, h *diffdisk.Disk) error {
	pages := o.Image.Pages()
	slices.Sort(pages)
	o.PageRanges = runs(pages)
	owned := make([]bool, len(pages))
	end := (pages[len(pages)-1] + 1) * swsusp.PageSize
	o.LayerDepth = -1
	for i := range h.Depth() {
		l := h.Layer(i)
		lp := LayerPages{Layer: layerName(d.Layer(i))}
		for e, err := range l.Extents(0, min(end, l.Size())) {
			if err != nil {
				return err
			}
			if e.Kind == disklayer.Absent {
				continue
			}
			lp.Pages += claim(pages, owned, e.Off/swsusp.PageSize, (e.End()+swsusp.PageSize-1)/swsusp.PageSize)
		}
		lp.Bytes = int64(lp.Pages) * swsusp.PageSize
		o.Stored = append(o.Stored, lp)
		if o.LayerDepth < 0 && owned[0] && pages[0] == 0 {
			o.LayerDepth, o.Layer = i, lp.Layer
		}
	}
	return nil
}

// claim marks the unowned pages in [from, to) as owned and counts them.
func claim(pages []int64, owned []bool, from, to int64) int {
	n := 0
	i, _ := slices.BinarySearch(pages, from)
	for ; i < len(pages) && pages[i] < to; i++ {
		if !owned[i] {
			owned[i] = true
			n++
		}
	}
	return n
}

func layerName(l disklayer.Layer) string {
	if f, ok := l.(*sqlitelayer.File); ok {
		return f.Path()
	}
	return fmt.Sprintf("%T", l)
}

// runs turns sorted page numbers into inclusive runs.
func runs(pages []int64) [][2]int64 {
	var out [][2]int64
	for _, p := range pages {
		if n := len(out); n > 0 && out[n-1][1]+1 == p {
			out[n-1][1] = p
			continue
		}
		out = append(out, [2]int64{p, p})
	}
	return out
}

// CompareOSImage compares the OS hibernation images of c and other.
func (c *Chain) CompareOSImage(other *Chain) (*OSImageDiff, error) {
	ha, err := c.hibernate()
	if err != nil {
		return nil, fmt.Errorf("image A: %w", err)
	}
	hb, err := other.hibernate()
	if err != nil {
		return nil, fmt.Errorf("image B: %w", err)
	}
	return compareChains(c.disk, other.disk, ha, hb)
}
