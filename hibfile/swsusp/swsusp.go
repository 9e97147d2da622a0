package swsusp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// PageSize is the page size the parser understands.
const PageSize = 4096

// Source names a Linux swsusp image wherever hibdisk describes it.
const Source = "linux-swsusp"

// Errors, wrapped with what was found.
var (
	// ErrNoImage: the area holds no hibernation image (no S1SUSPEND
	// signature): a plain swap area, a consumed image, or something else.
	ErrNoImage = errors.New("no Linux hibernation image")
	// ErrDamaged: the S1SUSPEND signature is there but the image cannot
	// be what the kernel wrote (a map or header out of range or
	// inconsistent); the kernel would refuse to resume from it.
	ErrDamaged = errors.New("damaged Linux hibernation image")
)

// Flags of swsusp_header.flags (kernel/power/power.h).
const (
	FlagPlatformMode   = 1
	FlagNoCompress     = 2
	FlagCRC32          = 4
	FlagHWSig          = 8
	FlagCompressionLZ4 = 16
)

// X86_64RestoreMagic is restore_data_record.magic on x86_64 (since 4.19).
const X86_64RestoreMagic = 0x23456789ABCDEF02

// mapEntries is MAP_PAGE_ENTRIES: PAGE_SIZE/sizeof(sector_t) - 1.
const mapEntries = PageSize/8 - 1

// pfnEnd is BM_END_OF_MAP; pfnZero marks a zero page (6.8+).
const (
	pfnEnd  = ^uint64(0)
	pfnZero = uint64(1) << 63
)

// Header is the swap header page: mkswap's union swap_header and, when
// hibernated, the kernel's struct swsusp_header over its end.
type Header struct {
	// Signature is the magic at PAGE_SIZE-10: "S1SUSPEND" for an image,
	// "SWAPSPACE2" for a plain swap area.
	Signature string `json:"signature"`
	// OrigSignature is the swap magic the kernel replaced (orig_sig).
	OrigSignature string `json:"orig_signature,omitempty"`
	SwapVersion   uint32 `json:"swap_version"`
	// LastPage is the swap area's last usable page (mkswap's size - 1).
	LastPage uint32 `json:"last_page"`
	BadPages uint32 `json:"bad_pages"`
	UUID     string `json:"uuid"`
	Label    string `json:"label,omitempty"`
	// FirstMapPage is swsusp_header.image: the first swap_map_page.
	FirstMapPage int64  `json:"first_map_page"`
	Flags        uint32 `json:"flags"`
	CRC32        uint32 `json:"crc32"`
	HWSig        uint32 `json:"hw_sig"`
}

// Hibernated reports whether the header holds an image's signature.
func (h *Header) Hibernated() bool { return h.Signature == "S1SUSPEND" }

// Info is struct swsusp_info, the image stream's first page.
type Info struct {
	// Sysname .. Machine come from new_utsname; on x86 (and every
	// architecture with an arch hibernation header) they are not
	// recorded and are empty.
	Sysname  string `json:"sysname,omitempty"`
	Nodename string `json:"nodename,omitempty"`
	Release  string `json:"release,omitempty"`
	Version  string `json:"version,omitempty"`
	Machine  string `json:"machine,omitempty"`
	// VersionCode is LINUX_VERSION_CODE when new_utsname is recorded.
	VersionCode uint32 `json:"version_code,omitempty"`
	// ArchMagic is restore_data_record.magic for x86_64 images.
	ArchMagic    uint64 `json:"arch_magic,omitempty"`
	NumPhysPages uint64 `json:"num_physpages"`
	CPUs         int32  `json:"cpus"`
	ImagePages   uint64 `json:"image_pages"`
	Pages        uint64 `json:"pages"`
	Size         uint64 `json:"size"`
}

// MetaPages is the number of PFN list pages in the stream.
func (i *Info) MetaPages() uint64 { return i.Pages - 1 - i.ImagePages }

// Image is a parsed swsusp image. Page numbers are page offsets in the
// swap area (byte offset = page × PageSize).
type Image struct {
	Header Header `json:"header"`
	Info   Info   `json:"info"`
	// Arch is "x86_64" when the arch header says so, else Info.Machine.
	Arch string `json:"arch"`
	// MapPages are the swap_map_page pages in chain order.
	MapPages []int64 `json:"-"`
	// Entries are the pages of the stream in order; Entries[0] holds
	// Info.
	Entries []int64 `json:"-"`
	// PFNs, for uncompressed images, is the page frame of each data page
	// (Entries[1+MetaPages+i] holds PFN i); nil when compressed.
	PFNs []uint64 `json:"-"`
	// ZeroPages counts PFNs the kernel marked as zero pages (6.8+): they
	// have no data page.
	ZeroPages uint64 `json:"zero_pages"`
}

// Compression is "none", "lzo" or "lz4".
func (im *Image) Compression() string {
	switch {
	case im.Header.Flags&FlagNoCompress != 0:
		return "none"
	case im.Header.Flags&FlagCompressionLZ4 != 0:
		return "lz4"
	}
	return "lzo"
}

// FlagNames lists the header's flags by name.
func (im *Image) FlagNames() []string {
	names := []string{"platform", "nocompress", "crc32", "hw_sig", "lz4"}
	var out []string
	for i, n := range names {
		if im.Header.Flags&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if rest := im.Header.Flags &^ (1<<len(names) - 1); rest != 0 {
		out = append(out, fmt.Sprintf("%#x", rest))
	}
	return out
}

// Pages lists every page the image occupies: the header page 0, the map
// pages and the stream, in that order.
func (im *Image) Pages() []int64 {
	out := make([]int64, 0, 1+len(im.MapPages)+len(im.Entries))
	out = append(out, 0)
	out = append(out, im.MapPages...)
	return append(out, im.Entries...)
}

// StoredBytes is what the image occupies in the swap area.
func (im *Image) StoredBytes() int64 { return int64(1+len(im.MapPages)+len(im.Entries)) * PageSize }

// ReadHeader reads the swap header page. A page that is neither a swap
// area nor an image is ErrNoImage.
func ReadHeader(r io.ReaderAt) (*Header, error) {
	page, err := readPage(r, 0)
	if err != nil {
		return nil, fmt.Errorf("swap header: %w", err)
	}
	h := parseHeader(page)
	switch h.Signature {
	case "S1SUSPEND", "SWAPSPACE2", "SWAP-SPACE":
		return h, nil
	}
	return nil, fmt.Errorf("no swap signature at byte %d: %w", PageSize-10, ErrNoImage)
}

func parseHeader(p []byte) *Header {
	le := binary.LittleEndian
	h := &Header{
		Signature:    cstring(p[PageSize-10:]),
		SwapVersion:  le.Uint32(p[1024:]),
		LastPage:     le.Uint32(p[1028:]),
		BadPages:     le.Uint32(p[1032:]),
		UUID:         formatUUID(p[1036:1052]),
		Label:        cstring(p[1052:1068]),
		HWSig:        le.Uint32(p[4056:]),
		CRC32:        le.Uint32(p[4060:]),
		FirstMapPage: int64(le.Uint64(p[4064:])),
		Flags:        le.Uint32(p[4072:]),
	}
	if h.Hibernated() {
		h.OrigSignature = cstring(p[4076:4086])
	} else {
		h.HWSig, h.CRC32, h.FirstMapPage, h.Flags = 0, 0, 0, 0
	}
	return h
}

// Parse reads and checks the image in the swap area r. Without the
// S1SUSPEND signature the error wraps ErrNoImage (and says whether a
// plain swap area is there); an image that cannot be what the kernel
// wrote wraps ErrDamaged; a read failure is returned as it is.
func Parse(r io.ReaderAt) (*Image, error) {
	h, err := ReadHeader(r)
	if err != nil {
		return nil, err
	}
	if !h.Hibernated() {
		return nil, fmt.Errorf("swap area (%s, %d pages) without an image: %w", h.Signature, uint64(h.LastPage)+1, ErrNoImage)
	}
	im := &Image{Header: *h}
	if err := im.checkHeader(); err != nil {
		return nil, err
	}
	if err := im.readMap(r); err != nil {
		return nil, err
	}
	if err := im.readInfo(r); err != nil {
		return nil, err
	}
	if im.Header.Flags&FlagNoCompress != 0 {
		if err := im.readPFNs(r); err != nil {
			return nil, err
		}
	}
	return im, nil
}

func damaged(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrDamaged)
}

func (im *Image) checkHeader() error {
	h := &im.Header
	if h.OrigSignature != "SWAPSPACE2" && h.OrigSignature != "SWAP-SPACE" {
		return damaged("swap header: orig_sig %q, want SWAPSPACE2", h.OrigSignature)
	}
	if h.SwapVersion != 1 {
		return damaged("swap header: version %d, want 1", h.SwapVersion)
	}
	if !im.inArea(h.FirstMapPage) {
		return damaged("swap header: first map page %d outside the swap area (pages 1..%d)", h.FirstMapPage, h.LastPage)
	}
	return nil
}

// inArea reports whether page p can hold image data: not the header,
// not past last_page.
func (im *Image) inArea(p int64) bool { return p >= 1 && p <= int64(im.Header.LastPage) }

// readMap follows the swap_map_page chain and collects the stream's
// entries; every page must be in the area and used once.
func (im *Image) readMap(r io.ReaderAt) error {
	seen := map[int64]bool{}
	ended := false
	for next := im.Header.FirstMapPage; next != 0; {
		if !im.inArea(next) || seen[next] {
			return damaged("swap map: map page %d after map page %d is outside the area or used twice", next, lastOr(im.MapPages, 0))
		}
		seen[next] = true
		im.MapPages = append(im.MapPages, next)
		page, err := readPage(r, next)
		if err != nil {
			return fmt.Errorf("swap map page %d: %w", next, err)
		}
		for i := range mapEntries {
			e := int64(binary.LittleEndian.Uint64(page[8*i:]))
			if e == 0 {
				ended = true
				continue
			}
			if ended {
				return damaged("swap map page %d: entry %d follows the end of the stream", next, i)
			}
			if !im.inArea(e) || seen[e] {
				return damaged("swap map page %d: entry %d (page %d) is outside the area or used twice", next, i, e)
			}
			seen[e] = true
			im.Entries = append(im.Entries, e)
		}
		next = int64(binary.LittleEndian.Uint64(page[8*mapEntries:]))
		if ended && next != 0 {
			return damaged("swap map page %d: the stream ended but next_swap is %d", im.MapPages[len(im.MapPages)-1], next)
		}
	}
	if len(im.Entries) < 1 {
		return damaged("swap map: no pages in the stream")
	}
	return nil
}

func lastOr(s []int64, def int64) int64 {
	if len(s) == 0 {
		return def
	}
	return s[len(s)-1]
}

// readInfo reads and checks struct swsusp_info.
func (im *Image) readInfo(r io.ReaderAt) error {
	p, err := readPage(r, im.Entries[0])
	if err != nil {
		return fmt.Errorf("image header page %d: %w", im.Entries[0], err)
	}
	le := binary.LittleEndian
	in := Info{
		NumPhysPages: le.Uint64(p[400:]),
		CPUs:         int32(le.Uint32(p[408:])),
		ImagePages:   le.Uint64(p[416:]),
		Pages:        le.Uint64(p[424:]),
		Size:         le.Uint64(p[432:]),
	}
	if magic := le.Uint64(p[24:]); magic == X86_64RestoreMagic {
		in.ArchMagic = magic
		im.Arch = "x86_64"
	} else {
		const n = 65
		in.Sysname, in.Nodename, in.Release = cstring(p[0:n]), cstring(p[n:2*n]), cstring(p[2*n:3*n])
		in.Version, in.Machine = cstring(p[3*n:4*n]), cstring(p[4*n:5*n])
		in.VersionCode = le.Uint32(p[392:])
		im.Arch = in.Machine
	}
	im.Info = in
	return im.checkInfo()
}

func (im *Image) checkInfo() error {
	in := &im.Info
	if im.Arch == "" {
		return damaged("image header page %d: neither the x86_64 arch header nor a kernel name", im.Entries[0])
	}
	if in.Pages < 1 || in.ImagePages >= in.Pages || in.Size != in.Pages*PageSize {
		return damaged("image header: pages %d, image_pages %d, size %d do not fit together", in.Pages, in.ImagePages, in.Size)
	}
	if in.Pages > uint64(im.Header.LastPage) {
		return damaged("image header: %d pages do not fit a swap area of %d", in.Pages, im.Header.LastPage)
	}
	if im.Header.Flags&FlagNoCompress != 0 && uint64(len(im.Entries)) != in.Pages {
		return damaged("uncompressed image of %d pages, but the swap map lists %d", in.Pages, len(im.Entries))
	}
	return nil
}

// readPFNs decodes the PFN list of an uncompressed image.
func (im *Image) readPFNs(r io.ReaderAt) error {
	meta := im.Info.MetaPages()
	want := im.Info.ImagePages
	for i := range meta {
		at := im.Entries[1+i]
		p, err := readPage(r, at)
		if err != nil {
			return fmt.Errorf("PFN list page %d: %w", at, err)
		}
		for j := 0; j < PageSize; j += 8 {
			v := binary.LittleEndian.Uint64(p[j:])
			switch {
			case v == pfnEnd:
				return im.checkPFNs(want)
			case v&pfnZero != 0:
				im.ZeroPages++
			default:
				im.PFNs = append(im.PFNs, v)
			}
			if uint64(len(im.PFNs)) > want {
				return damaged("PFN list: more than the %d data pages", want)
			}
		}
	}
	return im.checkPFNs(want)
}

func (im *Image) checkPFNs(want uint64) error {
	if uint64(len(im.PFNs)) != want {
		return damaged("PFN list: %d data pages, header says %d", len(im.PFNs), want)
	}
	for i := 1; i < len(im.PFNs); i++ {
		if im.PFNs[i] <= im.PFNs[i-1] {
			return damaged("PFN list: PFN %d after %d (not ascending)", im.PFNs[i], im.PFNs[i-1])
		}
	}
	return nil
}

// DataPage returns the swap page holding the data of PFN index i of an
// uncompressed image.
func (im *Image) DataPage(i int) int64 { return im.Entries[1+int(im.Info.MetaPages())+i] }

func readPage(r io.ReaderAt, page int64) ([]byte, error) {
	b := make([]byte, PageSize)
	n, err := r.ReadAt(b, page*PageSize)
	if n == PageSize {
		return b, nil
	}
	if errors.Is(err, io.EOF) || err == nil {
		return nil, damaged("page %d is past the end of the device", page)
	}
	return nil, fmt.Errorf("read page %d: %w", page, err)
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.ToValidUTF8(string(b), "?")
}

func formatUUID(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// bannerPrefix starts linux_banner ("Linux version 6.1.0-… (…) #1 SMP …").
var bannerPrefix = []byte("Linux version ")

// KernelBanner finds the running kernel's linux_banner in the data pages
// of an uncompressed image (kernel text and rodata are saved with the
// rest of RAM), reading at most limit data pages; "" when not found or
// the image is compressed.
func KernelBanner(r io.ReaderAt, im *Image, limit int) (string, error) {
	if im.PFNs == nil {
		return "", nil
	}
	for i := range min(len(im.PFNs), limit) {
		p, err := readPage(r, im.DataPage(i))
		if err != nil {
			return "", fmt.Errorf("data page of PFN %#x: %w", im.PFNs[i], err)
		}
		for off := 0; ; {
			j := bytes.Index(p[off:], bannerPrefix)
			if j < 0 {
				break
			}
			if s := bannerAt(p[off+j:]); s != "" {
				return s, nil
			}
			off += j + len(bannerPrefix)
		}
	}
	return "", nil
}

// bannerAt accepts "Linux version RELEASE (" followed by printable text up
// to a newline, the shape of linux_banner (not a format string).
func bannerAt(b []byte) string {
	end := bytes.IndexByte(b, '\n')
	if end < 0 || end > 300 {
		return ""
	}
	s := string(b[:end])
	if strings.Contains(s, "%") || !strings.Contains(s, " (") || !strings.Contains(s, "#") {
		return ""
	}
	for _, c := range s {
		if c < ' ' || c > '~' {
			return ""
		}
	}
	return s
}

// ReleaseOf returns the release in a linux_banner ("6.1.0-57-cloud-amd64").
func ReleaseOf(banner string) string {
	rest := strings.TrimPrefix(banner, string(bannerPrefix))
	rel, _, _ := strings.Cut(rest, " ")
	return rel
}
