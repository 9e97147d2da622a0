package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from per-size-class pools so that steady-state I/O
// allocates nothing. Class k holds buffers of capacity 1<<k plus
// bufHeadroom bytes: the headroom lets a READ reply put its header in
// front of the data and go out in one write without a copy.
const (
	bufHeadroom = 32 // >= chunkHeaderLen + 8 (OFFSET_DATA's offset field)
	minBufClass = 12 // 4 KiB
	maxBufClass = 25 // 32 MiB == MaxRequestLength
)

var bufPools [maxBufClass + 1]sync.Pool

// getBuf returns a buffer with len n (n <= MaxRequestLength+bufHeadroom)
// and unspecified contents.
func getBuf(n int) *[]byte {
	k := bufClass(n)
	if p, ok := bufPools[k].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<k+bufHeadroom)
	return &b
}

// putBuf returns a buffer obtained from getBuf to its pool.
func putBuf(p *[]byte) {
	c := cap(*p) - bufHeadroom
	if c <= 0 || c&(c-1) != 0 {
		return
	}
	k := bits.TrailingZeros(uint(c))
	if k < minBufClass || k > maxBufClass {
		return
	}
	bufPools[k].Put(p)
}

// bufClass is the smallest class whose buffers hold n bytes.
func bufClass(n int) int {
	data := n - bufHeadroom
	if data <= 1<<minBufClass {
		return minBufClass
	}
	return bits.Len(uint(data - 1))
}
