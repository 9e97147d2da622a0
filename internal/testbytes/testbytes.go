// Package testbytes fills tests' buffers. Under the race detector every
// store of a byte loop is a call into the detector, so these write eight
// bytes at a time (Random) or double what is set with each copy (Fill):
// byte loops over megabytes were a large part of the suite's time under
// -race.
package testbytes

import (
	"encoding/binary"
	"math/rand/v2"
)

// Fill sets every byte of p to b.
func Fill(p []byte, b byte) {
	if len(p) == 0 {
		return
	}
	p[0] = b
	for n := 1; n < len(p); n *= 2 {
		copy(p[n:], p[:n])
	}
}

// Random fills p with bytes drawn from rng, eight for each rng.Uint64.
func Random(rng *rand.Rand, p []byte) { random(rng, p, 0) }

// RandomNonZero fills p with random bytes none of which is zero, so that
// no sector of it reads as zeros.
func RandomNonZero(rng *rand.Rand, p []byte) { random(rng, p, 0x0101010101010101) }

// random fills p with rng's words, each ORed with mask.
func random(rng *rand.Rand, p []byte, mask uint64) {
	var w [8]byte
	for len(p) > 0 {
		binary.LittleEndian.PutUint64(w[:], rng.Uint64()|mask)
		p = p[copy(p, w[:]):]
	}
}
