package jbd2

import "hash/crc32"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the kernel's crc32c(seed, p): the raw CRC without the
// pre- and post-inversion hash/crc32 applies, so it can be chained from
// a seed the way jbd2_chksum and ext4_chksum are.
func crc32c(seed uint32, p []byte) uint32 {
	return ^crc32.Update(^seed, castagnoli, p)
}

// crcBETable is the MSB-first table for the kernel's crc32_be (polynomial
// 0x04C11DB7), used by the v1 transaction checksum (COMPAT_CHECKSUM).
var crcBETable = func() (t [256]uint32) {
	for i := range t {
		c := uint32(i) << 24
		for range 8 {
			if c&0x80000000 != 0 {
				c = c<<1 ^ 0x04C11DB7
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

// crc32BE is the kernel's crc32_be(seed, p): no inversions.
func crc32BE(crc uint32, p []byte) uint32 {
	for _, b := range p {
		crc = crc<<8 ^ crcBETable[byte(crc>>24)^b]
	}
	return crc
}
