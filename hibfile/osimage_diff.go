package hibfile

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/hibfile/swsusp"
)

// OSImageDiff is what changed between the OS hibernation images of two
// chains.
type OSImageDiff struct {
	Source string `json:"source"`
	// Changes are the header fields that differ: kernel, compression,
	// flags, memory_pages, image_pages, pages, size, hw_sig, layer.
	Changes []FieldChange `json:"changes"`
	// StreamPagesA and StreamPagesB are the image streams' lengths in
	// pages; StreamPagesChanged counts positions whose page differs (or
	// exists on one side only), comparing the streams in order.
	StreamPagesA       int `json:"stream_pages_a"`
	StreamPagesB       int `json:"stream_pages_b"`
	StreamPagesChanged int `json:"stream_pages_changed"`
	// SwapPagesChanged counts the pages of the swap area, among those
	// either image occupies, whose content differs: what a layer holding
	// B over A's layer stores at least.
	SwapPagesChanged int `json:"swap_pages_changed"`
	// ByPFN is set when both images are uncompressed: then RAM pages are
	// compared by page frame.
	ByPFN       bool `json:"by_pfn"`
	PFNsAdded   int  `json:"pfns_added"`
	PFNsRemoved int  `json:"pfns_removed"`
	PFNsChanged int  `json:"pfns_changed"`
}

// Empty reports whether the two images are the same: no header field,
// stream page, swap page or page frame differs.
func (d *OSImageDiff) Empty() bool {
	return len(d.Changes) == 0 && d.StreamPagesA == d.StreamPagesB && d.StreamPagesChanged == 0 &&
		d.SwapPagesChanged == 0 && d.PFNsAdded+d.PFNsRemoved+d.PFNsChanged == 0
}

// CompareOSImages finds the OS hibernation image of each chain and
// compares them (ErrNoOSImage when either has none). It takes each
// chain's hibernate file view (Disk.Hibernate), which a chain gives once.
func CompareOSImages(a, b *diffdisk.Disk) (*OSImageDiff, error) {
	ha, err := hibernateOf(a)
	if err != nil {
		return nil, fmt.Errorf("image A: %w", err)
	}
	defer ha.Close()
	hb, err := hibernateOf(b)
	if err != nil {
		return nil, fmt.Errorf("image B: %w", err)
	}
	defer hb.Close()
	return compareChains(a, b, ha, hb)
}

func compareChains(a, b, ha, hb *diffdisk.Disk) (*OSImageDiff, error) {
	oa, err := findOSImage(a, ha)
	if err != nil {
		return nil, fmt.Errorf("image A: %w", err)
	}
	ob, err := findOSImage(b, hb)
	if err != nil {
		return nil, fmt.Errorf("image B: %w", err)
	}
	return compareOSImages(oa, ob, ha, hb)
}

func compareOSImages(oa, ob *OSImage, ha, hb io.ReaderAt) (*OSImageDiff, error) {
	ia, ib := oa.Image, ob.Image
	d := &OSImageDiff{Source: oa.Source, StreamPagesA: len(ia.Entries), StreamPagesB: len(ib.Entries)}
	d.Changes = osImageChanges(oa, ob)
	pc := pageComparer{a: ha, b: hb, pa: make([]byte, swsusp.PageSize), pb: make([]byte, swsusp.PageSize)}
	n := min(len(ia.Entries), len(ib.Entries))
	d.StreamPagesChanged = max(len(ia.Entries), len(ib.Entries)) - n
	for i := range n {
		same, err := pc.same(ia.Entries[i], ib.Entries[i])
		if err != nil {
			return nil, err
		}
		if !same {
			d.StreamPagesChanged++
		}
	}
	union := slices.Compact(slices.Sorted(slices.Values(append(ia.Pages(), ib.Pages()...))))
	for _, p := range union {
		same, err := pc.same(p, p)
		if err != nil {
			return nil, err
		}
		if !same {
			d.SwapPagesChanged++
		}
	}
	if ia.PFNs != nil && ib.PFNs != nil {
		d.ByPFN = true
		if err := comparePFNs(d, ia, ib, &pc); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// comparePFNs walks both ascending PFN lists together.
func comparePFNs(d *OSImageDiff, ia, ib *swsusp.Image, pc *pageComparer) error {
	i, j := 0, 0
	for i < len(ia.PFNs) || j < len(ib.PFNs) {
		switch {
		case j == len(ib.PFNs) || (i < len(ia.PFNs) && ia.PFNs[i] < ib.PFNs[j]):
			d.PFNsRemoved++
			i++
		case i == len(ia.PFNs) || ib.PFNs[j] < ia.PFNs[i]:
			d.PFNsAdded++
			j++
		default:
			same, err := pc.same(ia.DataPage(i), ib.DataPage(j))
			if err != nil {
				return err
			}
			if !same {
				d.PFNsChanged++
			}
			i, j = i+1, j+1
		}
	}
	return nil
}

type pageComparer struct {
	a, b   io.ReaderAt
	pa, pb []byte
}

func (c *pageComparer) same(pageA, pageB int64) (bool, error) {
	if _, err := c.a.ReadAt(c.pa, pageA*swsusp.PageSize); err != nil {
		return false, fmt.Errorf("read page %d of A: %w", pageA, err)
	}
	if _, err := c.b.ReadAt(c.pb, pageB*swsusp.PageSize); err != nil {
		return false, fmt.Errorf("read page %d of B: %w", pageB, err)
	}
	return bytes.Equal(c.pa, c.pb), nil
}

func osImageChanges(oa, ob *OSImage) []FieldChange {
	ia, ib := oa.Image, ob.Image
	fields := []struct {
		name string
		a, b any
	}{
		{"kernel", oa.Kernel, ob.Kernel},
		{"compression", ia.Compression(), ib.Compression()},
		{"flags", strings.Join(ia.FlagNames(), ","), strings.Join(ib.FlagNames(), ",")},
		{"memory_pages", ia.Info.NumPhysPages, ib.Info.NumPhysPages},
		{"image_pages", ia.Info.ImagePages, ib.Info.ImagePages},
		{"pages", ia.Info.Pages, ib.Info.Pages},
		{"size", ia.Info.Size, ib.Info.Size},
		{"hw_sig", ia.Header.HWSig, ib.Header.HWSig},
		{"layer", oa.Layer, ob.Layer},
	}
	var out []FieldChange
	for _, f := range fields {
		if a, b := fmt.Sprint(f.a), fmt.Sprint(f.b); a != b {
			out = append(out, FieldChange{Field: f.name, Old: a, New: b})
		}
	}
	return out
}
