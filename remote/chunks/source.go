package chunks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// Source fetches the raw bytes of one blob: exactly n bytes at off,
// which the caller keeps inside the blob. The store's Source does a
// ranged GET pinned to the object's ETag (If-Match), and wraps ErrGone
// when the object is missing or another; any other error counts as
// transient and is retried. Fetch must be safe for concurrent use. The
// Reader verifies what it returns, so a Source need not.
type Source interface {
	Fetch(ctx context.Context, off, n int64) ([]byte, error)
}

// FileSource is a Source over a local file holding the blob (a pulled
// layer, or the layer itself before it is pushed).
type FileSource struct {
	f *os.File
}

// OpenFileSource opens the file at path as a Source.
func OpenFileSource(path string) (*FileSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open blob file: %w", err)
	}
	return &FileSource{f: f}, nil
}

// Fetch reads n bytes at off. A file shorter than that is ErrGone: it
// is not the blob it was meant to be.
func (s *FileSource) Fetch(ctx context.Context, off, n int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	got, err := s.f.ReadAt(b, off)
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %d bytes at %d: file ends after %d: %w", s.f.Name(), n, off, off+int64(got), ErrGone)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.f.Name(), err)
	}
	return b, nil
}

// Close closes the file.
func (s *FileSource) Close() error { return s.f.Close() }
