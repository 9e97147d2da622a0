package rawlayer

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// Formats Detect names: every image format QEMU knows by a magic number
// that a user is likely to hand hibdisk, and SQLite databases that are
// not hibdisk layers. A file none of them matches reads as raw.
const (
	FormatQCOW2     = "qcow2"
	FormatQCOW      = "qcow"
	FormatQED       = "qed"
	FormatVMDK      = "vmdk"
	FormatVHDX      = "vhdx"
	FormatVPC       = "vpc"
	FormatVDI       = "vdi"
	FormatParallels = "parallels"
	FormatLUKS      = "luks"
	FormatOpenVMM   = "openvmm-sqlite"
	FormatSQLite    = "sqlite"
)

// Detect names the image format of the file at path from its magic
// numbers, the way QEMU probes (block/*.c probe functions), or returns ""
// when the file matches none of them and reads as raw. It does not
// recognise hibdisk layers (sqlitelayer.IsLayer does; call it first:
// Detect reports them as FormatSQLite).
//
// Checked: qcow and qcow2 ("QFI\xfb" and the version), qed ("QED\0"),
// vmdk (sparse "KDMV", streamOptimized too, and a text descriptor), vhdx
// ("vhdxfile"), vpc/vhd ("conectix" at the start of a dynamic image or in
// the footer of a fixed one), vdi (its signature at 0x40), parallels,
// LUKS, and SQLite databases (an OpenVMM disklayer_sqlite file by its
// meta table in the schema page).
func Detect(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("detect image format: %w", err)
	}
	defer f.Close()
	head := make([]byte, 4096)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return "", fmt.Errorf("detect image format of %q: %w", path, err)
	}
	head = growToSQLitePage(f, head[:n])
	if format := detectHead(head); format != "" {
		return format, nil
	}
	// A fixed VHD has its footer in the last 512 bytes only.
	st, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("detect image format of %q: %w", path, err)
	}
	if st.Size() >= 512 {
		footer := make([]byte, 8)
		if _, err := f.ReadAt(footer, st.Size()-512); err == nil && string(footer) == "conectix" {
			return FormatVPC, nil
		}
	}
	return "", nil
}

// growToSQLitePage returns the whole first page of an SQLite database
// whose pages are larger than head: its schema is stored from the end of
// the page down. Anything else is returned as it is.
func growToSQLitePage(f *os.File, head []byte) []byte {
	if len(head) < 18 || string(head[:16]) != "SQLite format 3\x00" {
		return head
	}
	page := int(binary.BigEndian.Uint16(head[16:18]))
	if page == 1 {
		page = 65536
	}
	if page <= len(head) || page > 65536 {
		return head
	}
	full := make([]byte, page)
	n, _ := f.ReadAt(full, 0) // a short read leaves what there is
	return full[:max(n, len(head))]
}

// detectHead names the format from the first bytes of a file.
func detectHead(b []byte) string {
	has := func(off int, magic string) bool {
		return len(b) >= off+len(magic) && string(b[off:off+len(magic)]) == magic
	}
	switch {
	case has(0, "QFI\xfb"):
		if len(b) >= 8 && binary.BigEndian.Uint32(b[4:8]) == 1 {
			return FormatQCOW
		}
		return FormatQCOW2
	case has(0, "QED\x00"):
		return FormatQED
	case has(0, "KDMV"), has(0, "COWD"):
		return FormatVMDK
	case has(0, "# Disk DescriptorFile"), bytes.Contains(b[:min(len(b), 1024)], []byte("\ncreateType=")) && bytes.HasPrefix(b, []byte("#")):
		return FormatVMDK
	case has(0, "vhdxfile"):
		return FormatVHDX
	case has(0, "conectix"):
		return FormatVPC
	case len(b) >= 0x44 && binary.LittleEndian.Uint32(b[0x40:0x44]) == 0xbeda107f:
		return FormatVDI
	case has(0, "WithoutFreeSpace"), has(0, "WithouFreSpacExt"):
		return FormatParallels
	case has(0, "LUKS\xba\xbe"):
		return FormatLUKS
	case has(0, "SQLite format 3\x00"):
		// OpenVMM's disklayer_sqlite: tables sectors and meta, no
		// application_id; its schema lives in the first page once
		// checkpointed (the whole page: growToSQLitePage).
		if bytes.Contains(b, []byte("CREATE TABLE meta")) && bytes.Contains(b, []byte("sectors")) {
			return FormatOpenVMM
		}
		return FormatSQLite
	}
	return ""
}
