// Package swsusp reads the hibernation image that Linux's swsusp writes
// into a swap area: the guest's own hibernate image, written through a
// layer's hibernate file exported as a disk.
//
// # Layout (kernel/power/swap.c, power.h, snapshot.c; include/linux/swap.h)
//
// Every unit is a 4 KiB page; a "sector" in the kernel's structures is a
// page offset from the start of the swap area (hib_submit_io multiplies
// by PAGE_SIZE/512).
//
//   - Page 0 is the swap header (union swap_header, written by mkswap):
//     bootbits[1024], then version, last_page, nr_badpages (u32 each),
//     sws_uuid[16], sws_volume[16]; the magic "SWAPSPACE2" is at
//     PAGE_SIZE-10. On hibernation the kernel overlays struct
//     swsusp_header on the page's end (packed): hw_sig u32 at 4056,
//     crc32 u32 at 4060, image (sector_t: the first swap_map_page) at
//     4064, flags u32 at 4072, orig_sig[10] at 4076 (the "SWAPSPACE2" it
//     replaced) and sig[10] = "S1SUSPEND" at 4086. A resume restores
//     sig from orig_sig before loading, so a consumed image reads as a
//     plain swap area again.
//   - struct swap_map_page: 511 sector_t entries (the pages of the
//     image stream, in order) and next_swap (the next map page, 0 at the
//     end). The chain starts at swsusp_header.image; a zero entry ends
//     the stream.
//   - The stream's first page is struct swsusp_info, always uncompressed
//     (swsusp_write writes it with swap_write_page before save_image or
//     save_image_lzo): new_utsname (6 × 65 bytes), version_code u32 at
//     392, num_physpages at 400, cpus at 408, image_pages at 416, pages
//     at 424, size at 432 (unsigned long each, x86_64 alignment). On
//     architectures with CONFIG_ARCH_HIBERNATION_HEADER (x86 among them)
//     init_header_complete writes the arch header over new_utsname and
//     version_code instead: on x86_64 struct restore_data_record
//     {jump_address, jump_address_phys, cr3, magic, e820_checksum} with
//     magic 0x23456789ABCDEF02, so the image does not name its kernel.
//   - Then the rest of the snapshot stream: pages-1-image_pages meta
//     pages of PFNs (unsigned long each, ~0 ends the list; since 6.8 the
//     top bit marks a zero page that has no data page), then image_pages
//     data pages in PFN order. With SF_NOCOMPRESS_MODE each stream page
//     is one swap page; otherwise the stream after the header is
//     compressed in chunks of up to 32 pages, each written as a size_t
//     length followed by the compressed bytes, padded to whole pages
//     (LZO, or LZ4 when SF_COMPRESSION_ALG_LZ4 is set, 6.9+), and crc32
//     (SF_CRC32_MODE) covers the uncompressed chunks.
//
// Limits: 4 KiB pages, little-endian 64-bit layouts (x86_64; other
// 64-bit little-endian architectures parse but are not tested), the swap
// area at offset 0 of the device (a swap partition or whole disk, not a
// swap file's resume_offset), kernels from 3.x on (crc32 and hw_sig are
// later additions and read as zero from kernels without them). Compressed
// streams are not decompressed: their PFN lists and crc32 are not
// checked.
package swsusp
