package layertest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/testbytes"
)

// testConcurrency runs one writer and several readers on one disk. The
// writer issues numbered sector-aligned writes (generation g fills its
// sectors with byte g) and Zero requests (byte 0). Every byte a reader
// sees must come from a write to its sector that had not been superseded
// when the read started, or from one that started before the read
// ended: a read sees every write that completed before it, and nothing
// that was never written. After the writer finishes, every read sees the
// final content. Run it under -race.
//
// The check is per byte, not per sector: the contract does not promise
// that a read racing a write to the same sector sees it whole (a raw file
// read with pread does not).
func (f Factory) testConcurrency(t *testing.T) {
	f.eachConfig(t, func(t *testing.T, c config) {
		rng := rand.New(rand.NewPCG(seed(t), 1))
		ss := int64(c.sectorSize)
		const sectors = 32
		writes := 200
		if testing.Short() {
			writes = 60
		}
		size := sectors * ss
		d := f.New(t, size, c.sectorSize, c.hasParent)
		t.Cleanup(func() {
			if err := d.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})

		// The plan is fixed before any goroutine starts, so goroutines
		// share it without synchronization.
		type span struct {
			first, count int64
			value        byte // 0: a Zero request
		}
		plan := make([]span, writes+1) // plan[g] for generations 1..writes
		final := make([]byte, sectors)
		for g := 1; g <= writes; g++ {
			first := rng.Int64N(sectors)
			s := span{first: first, count: 1 + rng.Int64N(min(6, sectors-first)), value: byte(g)}
			if rng.IntN(5) == 0 {
				s.value = 0
			}
			plan[g] = s
			for i := s.first; i < s.first+s.count; i++ {
				final[i] = s.value
			}
		}
		var started, completed [sectors]atomic.Int64

		// possible reports whether byte b may be seen in sector s by a
		// read that started when completed[s] was lo and ended when
		// started[s] was hi.
		possible := func(b byte, s, lo, hi int64) bool {
			if lo == 0 && b == 0 {
				return true
			}
			for g := max(lo, 1); g <= hi; g++ {
				p := plan[g]
				if p.first <= s && s < p.first+p.count && p.value == b {
					return true
				}
			}
			return false
		}

		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			defer close(done)
			buf := make([]byte, 6*ss) // reused: see harness.scratch
			for g := 1; g <= writes; g++ {
				p := plan[g]
				for i := p.first; i < p.first+p.count; i++ {
					started[i].Store(int64(g))
				}
				var err error
				if p.value == 0 {
					err = d.Zero(p.first*ss, p.count*ss)
				} else {
					data := buf[:p.count*ss]
					testbytes.Fill(data, p.value)
					_, err = d.WriteAt(data, p.first*ss)
				}
				if err != nil {
					t.Errorf("writer generation %d: %v", g, err)
					return
				}
				for i := p.first; i < p.first+p.count; i++ {
					completed[i].Store(int64(g))
				}
				if g%50 == 0 {
					if err := d.Flush(); err != nil {
						t.Errorf("writer Flush: %v", err)
						return
					}
				}
			}
		})

		ownReader, _ := d.(disklayer.OwnReader)
		// read reads [off, off+len(p)) into p (zeroed first) with ReadAt
		// or ReadOwn and checks it.
		read := func(p []byte, off int64, own bool) error {
			n := int64(len(p))
			var lo, hi [sectors]int64
			for i := range lo {
				lo[i] = completed[i].Load()
			}
			clear(p)
			var err error
			if own {
				err = ownReader.ReadOwn(p, off, func(int64, int64) error { return nil })
			} else {
				_, err = d.ReadAt(p, off)
			}
			if err != nil {
				return fmt.Errorf("read [%d, %d): %w", off, off+n, err)
			}
			for i := range hi {
				hi[i] = started[i].Load()
			}
			// Check each distinct byte value of each sector once.
			for start := int64(0); start < n; {
				s := (off + start) / ss
				end := min(n, (s+1)*ss-off)
				var seen [256]bool
				for _, b := range p[start:end] {
					seen[b] = true
				}
				for b, ok := range seen {
					if ok && !possible(byte(b), s, lo[s], hi[s]) {
						at := off + start + int64(bytes.IndexByte(p[start:end], byte(b)))
						return fmt.Errorf("read [%d, %d) (own=%v) saw byte %d at %d; sector %d had completed generation %d and started %d",
							off, off+n, own, b, at, s, lo[s], hi[s])
					}
				}
				start = end
			}
			return nil
		}

		for r := range 3 {
			readerRNG := rand.New(rand.NewPCG(rng.Uint64(), uint64(r)))
			wg.Go(func() {
				buf := make([]byte, 8*ss) // reused: see harness.scratch
				for finished := false; !finished; {
					select {
					case <-done:
						finished = true
					default:
					}
					off := readerRNG.Int64N(size)
					if readerRNG.IntN(2) == 0 {
						off -= off % ss
					}
					n := min(size-off, 1+readerRNG.Int64N(8*ss))
					if err := read(buf[:n], off, ownReader != nil && readerRNG.IntN(3) == 0); err != nil {
						t.Error(err)
						return
					}
				}
				// The writer is done: every read sees the final content.
				p := make([]byte, size)
				if _, err := d.ReadAt(p, 0); err != nil {
					t.Errorf("final read: %v", err)
					return
				}
				for s := range int64(sectors) {
					want := bytes.Repeat([]byte{final[s]}, int(ss))
					if !bytes.Equal(p[s*ss:(s+1)*ss], want) {
						t.Errorf("after the writer finished, sector %d reads %v, want all %d", s, firstDiff(p[s*ss:(s+1)*ss], want, s*ss), final[s])
						return
					}
				}
			})
		}
		wg.Go(func() {
			for finished := false; !finished; {
				select {
				case <-done:
					finished = true
				default:
				}
				list, err := collectExtents(d, 0, size)
				if err == nil {
					err = checkExtentShape(list, 0, size, c.sectorSize)
				}
				if err != nil {
					t.Errorf("extents reader: %v", err)
					return
				}
			}
		})
		wg.Wait()
	})
}
