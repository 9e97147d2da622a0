package nbd

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// memBackend is a sparse in-memory disk of 4 KiB pages: the test oracle.
// A page that is absent reads as zeros and is reported as a hole; Zero
// drops whole pages and zeroes partial ones.
type memBackend struct {
	size    int64
	mu      sync.RWMutex
	pages   map[int64]*[memPage]byte
	flushes atomic.Int64
}

const memPage = 4096

func newMemBackend(size int64) *memBackend {
	return &memBackend{size: size, pages: make(map[int64]*[memPage]byte)}
}

func (m *memBackend) Size() int64 { return m.size }

func (m *memBackend) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > m.size {
		return fmt.Errorf("mem: range [%d, %d) outside %d bytes: %w", off, off+n, m.size, EINVAL)
	}
	return nil
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, in := pos/memPage, int(pos%memPage)
		n := min(memPage-in, len(p)-done)
		if page := m.pages[pg]; page != nil {
			copy(p[done:done+n], page[in:in+n])
		} else {
			clear(p[done : done+n])
		}
		done += n
	}
	return len(p), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, in := pos/memPage, int(pos%memPage)
		n := min(memPage-in, len(p)-done)
		page := m.pages[pg]
		if page == nil {
			page = new([memPage]byte)
			m.pages[pg] = page
		}
		copy(page[in:in+n], p[done:done+n])
		done += n
	}
	return len(p), nil
}

func (m *memBackend) Zero(off, length int64) error {
	if err := m.check(off, length); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for pos := off; pos < off+length; {
		pg, in := pos/memPage, pos%memPage
		n := min(memPage-in, off+length-pos)
		if n == memPage {
			delete(m.pages, pg)
		} else if page := m.pages[pg]; page != nil {
			clear(page[in : in+n])
		}
		pos += n
	}
	return nil
}

func (m *memBackend) Flush() error {
	m.flushes.Add(1)
	return nil
}

func (m *memBackend) BlockStatus(off, length int64, fn func(off, length int64, state uint32) bool) error {
	if err := m.check(off, length); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	for pg := off / memPage; pg*memPage < off+length; pg++ {
		state := StateHole | StateZero
		if m.pages[pg] != nil {
			state = 0
		}
		if !fn(pg*memPage, memPage, state) {
			return nil
		}
	}
	return nil
}

// sparseMemBackend adds SparseReader to memBackend.
type sparseMemBackend struct{ *memBackend }

func (m sparseMemBackend) ReadSparse(p []byte, off int64, zero func(off, length int64)) error {
	if _, err := m.ReadAt(p, off); err != nil {
		return err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	end := off + int64(len(p))
	for pg := off / memPage; pg*memPage < end; pg++ {
		if m.pages[pg] == nil {
			s, e := max(pg*memPage, off), min((pg+1)*memPage, end)
			zero(s, e-s)
		}
	}
	return nil
}
