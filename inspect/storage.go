package inspect

import (
	"container/list"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/backend"

	"github.com/hibdisk/hibdisk/disklayer"
)

// cacheChunk is the unit of the storage's read cache. go-diskfs reads
// filesystem metadata in small pieces (a 256-byte inode, one directory
// block); each uncached read would be a query down the layer chain.
const cacheChunk = 64 << 10

// cacheChunks bounds the cache: 256 chunks of 64 KiB, 16 MiB.
const cacheChunks = 256

// Storage is a read-only go-diskfs backend.Storage over a layer (usually
// a diffdisk chain). Writable always fails with
// backend.ErrIncorrectOpenMode: go-diskfs does not enforce read-only
// opens itself, and an inspection must never change the image.
//
// Reads smaller than a cache chunk go through an LRU cache of aligned
// chunks; larger reads go straight to the layer. The layer must not
// change while the Storage is in use (the cache would go stale).
type Storage struct {
	layer disklayer.Layer
	name  string

	mu    sync.Mutex
	pos   int64                   // for Read and Seek
	cache map[int64]*list.Element // chunk offset -> element holding *chunk
	lru   list.List               // front: most recently used
}

type chunk struct {
	off  int64
	data []byte
}

var _ backend.Storage = (*Storage)(nil)

// NewStorage returns a read-only Storage over l; name is what Stat and
// Path report (the image's file name).
func NewStorage(l disklayer.Layer, name string) *Storage {
	return &Storage{layer: l, name: name, cache: make(map[int64]*list.Element)}
}

// ReadAt reads like io.ReaderAt: a read that reaches the end of the disk
// returns the bytes before it and io.EOF.
func (s *Storage) ReadAt(p []byte, off int64) (int, error) {
	size := s.layer.Size()
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: %w", s.name, off, disklayer.ErrOutOfRange)
	}
	if off >= size {
		return 0, io.EOF
	}
	want := p
	if int64(len(p)) > size-off {
		want = p[:size-off]
	}
	if err := s.read(want, off); err != nil {
		return 0, err
	}
	if len(want) < len(p) {
		return len(want), io.EOF
	}
	return len(p), nil
}

func (s *Storage) read(p []byte, off int64) error {
	if len(p) >= cacheChunk {
		if _, err := s.layer.ReadAt(p, off); err != nil {
			return fmt.Errorf("read %s at %d: %w", s.name, off, err)
		}
		return nil
	}
	for len(p) > 0 {
		c, err := s.chunkAt(off - off%cacheChunk)
		if err != nil {
			return err
		}
		n := copy(p, c.data[off-c.off:])
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// chunkAt returns the cached chunk at the aligned offset at, reading it
// on a miss.
func (s *Storage) chunkAt(at int64) (*chunk, error) {
	s.mu.Lock()
	if el, ok := s.cache[at]; ok {
		s.lru.MoveToFront(el)
		s.mu.Unlock()
		return el.Value.(*chunk), nil
	}
	s.mu.Unlock()
	c := &chunk{off: at, data: make([]byte, min(cacheChunk, s.layer.Size()-at))}
	if _, err := s.layer.ReadAt(c.data, at); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", s.name, at, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if el, ok := s.cache[at]; ok { // another reader filled it meanwhile
		return el.Value.(*chunk), nil
	}
	s.cache[at] = s.lru.PushFront(c)
	if s.lru.Len() > cacheChunks {
		old := s.lru.Back()
		s.lru.Remove(old)
		delete(s.cache, old.Value.(*chunk).off)
	}
	return c, nil
}

// Read reads from the position Seek set.
func (s *Storage) Read(p []byte) (int, error) {
	s.mu.Lock()
	pos := s.pos
	s.mu.Unlock()
	n, err := s.ReadAt(p, pos)
	s.mu.Lock()
	s.pos = pos + int64(n)
	s.mu.Unlock()
	return n, err
}

// Seek sets the position for Read.
func (s *Storage) Seek(offset int64, whence int) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pos int64
	switch whence {
	case io.SeekStart:
		pos = offset
	case io.SeekCurrent:
		pos = s.pos + offset
	case io.SeekEnd:
		pos = s.layer.Size() + offset
	default:
		return 0, fmt.Errorf("seek %s: whence %d: %w", s.name, whence, disklayer.ErrInvalid)
	}
	if pos < 0 {
		return 0, fmt.Errorf("seek %s to %d: %w", s.name, pos, disklayer.ErrOutOfRange)
	}
	s.pos = pos
	return pos, nil
}

// Stat describes the disk as a regular file of the disk's size, which is
// what go-diskfs needs to treat it as an image.
func (s *Storage) Stat() (fs.FileInfo, error) {
	return storageInfo{name: s.name, size: s.layer.Size()}, nil
}

// Close does nothing: the caller owns the layer.
func (s *Storage) Close() error { return nil }

// Sys fails: there is no operating-system file to send ioctls to.
func (s *Storage) Sys() (*os.File, error) { return nil, backend.ErrNotSuitable }

// Writable always fails: inspection is read-only.
func (s *Storage) Writable() (backend.WritableFile, error) {
	return nil, backend.ErrIncorrectOpenMode
}

// Path is the image's name.
func (s *Storage) Path() string { return s.name }

type storageInfo struct {
	name string
	size int64
}

func (i storageInfo) Name() string       { return i.name }
func (i storageInfo) Size() int64        { return i.size }
func (i storageInfo) Mode() fs.FileMode  { return 0o444 }
func (i storageInfo) ModTime() time.Time { return time.Time{} }
func (i storageInfo) IsDir() bool        { return false }
func (i storageInfo) Sys() any           { return nil }
