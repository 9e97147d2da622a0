package hibfile

import (
	"slices"
)

// MemoryImage is a sparse image held in memory: byte runs at blob
// offsets, zeros elsewhere. Import builds one from JSON; tests and other
// producers that hold content in memory pass one to Save.
type MemoryImage struct {
	runs   []imageRun // sorted by offset, not overlapping
	sorted bool
}

type imageRun struct {
	off  int64
	data []byte
}

// Put stores p at off (keeping p, not a copy). Runs must not overlap.
func (m *MemoryImage) Put(off int64, p []byte) {
	if len(p) == 0 {
		return
	}
	if n := len(m.runs); n > 0 && off < m.runs[n-1].off {
		m.sorted = false
	} else if n == 0 {
		m.sorted = true
	}
	m.runs = append(m.runs, imageRun{off, p})
}

// ReadAt fills p from the runs at off, zeros where none is stored.
func (m *MemoryImage) ReadAt(p []byte, off int64) (int, error) {
	if !m.sorted {
		slices.SortFunc(m.runs, func(a, b imageRun) int { return cmpInt(a.off, b.off) })
		m.sorted = true
	}
	clear(p)
	end := off + int64(len(p))
	i, _ := slices.BinarySearchFunc(m.runs, off, func(r imageRun, off int64) int { return cmpInt(r.off+int64(len(r.data)), off+1) })
	for ; i < len(m.runs) && m.runs[i].off < end; i++ {
		r := m.runs[i]
		lo, hi := max(r.off, off), min(r.off+int64(len(r.data)), end)
		if hi > lo {
			copy(p[lo-off:hi-off], r.data[lo-r.off:hi-r.off])
		}
	}
	return len(p), nil
}
