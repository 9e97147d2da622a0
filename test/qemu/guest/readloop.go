//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"
)

// readLoop is what TaskReadLoop reads, and for how long.
type readLoop struct {
	ends                  int64 // bytes of pattern at each end
	off, length, chunk    int64
	minRounds             int64
	minTime               time.Duration
	rounds, read, slowest int64 // done so far; slowest in ms
}

func readLoopParams(params map[string]string) (*readLoop, error) {
	r := &readLoop{}
	var seconds int64
	for _, p := range []struct {
		key      string
		dst      *int64
		fallback int64
	}{
		{"len", &r.ends, 64 << 10}, {"read-off", &r.off, 0}, {"read-len", &r.length, 4 << 20},
		{"chunk", &r.chunk, 1 << 20}, {"rounds", &r.minRounds, 1}, {"seconds", &seconds, 0},
	} {
		v, err := intParam(params, p.key, p.fallback)
		if err != nil {
			return nil, err
		}
		*p.dst = v
	}
	if r.chunk <= 0 || r.length <= 0 || r.chunk%4096 != 0 {
		return nil, fmt.Errorf("read-len=%d chunk=%d: want positive sizes, chunk a multiple of 4096", r.length, r.chunk)
	}
	r.minTime = time.Duration(seconds) * time.Second
	return r, nil
}

func taskReadLoop(params map[string]string) error {
	r, err := readLoopParams(params)
	if err != nil {
		return err
	}
	d, err := openDisk(params["disk"])
	if err != nil {
		return err
	}
	defer d.f.Close()
	seed := params["seed"]
	if r.ends > 0 {
		if err := d.writeEnds(seed, r.ends); err != nil {
			return err
		}
	}
	note("written", 1)
	first, err := r.loop(d)
	if err != nil {
		return err
	}
	note("sample", hex.EncodeToString(first))
	note("rounds", r.rounds)
	note("read-bytes", r.read)
	note("max-read-ms", r.slowest)
	if r.ends > 0 {
		return d.checkEnds(seed, r.ends)
	}
	return nil
}

// loop reads round after round until both minimums are met and returns
// the first round's sha256; every later round must match it.
func (r *readLoop) loop(d *blockDev) ([]byte, error) {
	start := time.Now()
	var first []byte
	for r.rounds < r.minRounds || time.Since(start) < r.minTime {
		sum, err := r.round(d)
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", r.rounds+1, err)
		}
		r.rounds++
		if first == nil {
			first = sum
			note("first-round-ms", time.Since(start).Milliseconds())
		} else if !bytes.Equal(sum, first) {
			return nil, fmt.Errorf("round %d read other bytes than round 1 (sha256 %x, then %x)", r.rounds, first, sum)
		}
	}
	return first, nil
}

// round reads the range once and returns its sha256.
func (r *readLoop) round(d *blockDev) ([]byte, error) {
	h := sha256.New()
	for pos, end := r.off, r.off+r.length; pos < end; pos += r.chunk {
		n := min(r.chunk, end-pos)
		began := time.Now()
		b, err := d.read(pos, int(n))
		if err != nil {
			return nil, err
		}
		r.slowest = max(r.slowest, time.Since(began).Milliseconds())
		r.read += n
		h.Write(b)
	}
	return h.Sum(nil), nil
}
