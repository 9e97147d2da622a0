package sqlitelayer

import (
	"fmt"
	"io"
	"strings"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// SizeReaderAt holds the bytes of a layer file: a sealed layer's blob
// (package remote/chunks reads one lazily from an object store).
type SizeReaderAt interface {
	io.ReaderAt
	Size() int64
}

// ReaderAtOptions control OpenReaderAt.
type ReaderAtOptions struct {
	// Strict runs the layer's consistency checks on open, as
	// OpenOptions.Strict does. It reads the whole layer.
	Strict bool
	// Closer, when set, is closed after the layer (the reader of its
	// bytes, say), also when the open fails.
	Closer io.Closer
}

// OpenReaderAt opens the sealed layer whose file's bytes r holds,
// read-only: SQLite reads it through r (readervfs), with no file, lock
// or journal of its own. name is how the layer is named in errors and
// by Path. The layer serves reads, extents and its layer row like a
// layer opened read-only with Open; writes return ErrReadOnly.
//
// r must not change while the layer is open. A layer in WAL mode is
// refused (ErrInvalid): its file alone may lack commits that are still
// in its WAL, which nothing would read; seal it first (VACUUM INTO,
// journal_mode=DELETE). A file shorter than its header says is
// ErrCorrupt. Errors of r reach the caller of the read that met them
// wrapped in the layer's error (an EIO of an unreachable store stays
// an EIO).
func OpenReaderAt(name string, r SizeReaderAt, opts ReaderAtOptions) (f *File, err error) {
	if opts.Closer != nil {
		defer func() {
			if err != nil {
				opts.Closer.Close()
			}
		}()
	}
	if err := checkReaderLength(name, r); err != nil {
		return nil, fileError("open layer", name, err)
	}
	conn, release, err := store.OpenReaderAt(name, r, r.Size(), store.Options{
		CacheBytes:   readOnlyCacheBytes,
		MaxMemory:    maxMemory,
		Migrations:   schema.History,
		ReadableFrom: schema.ReadableFrom,
	})
	if err != nil {
		return nil, fileError("open layer", name, mapStoreError(err))
	}
	if opts.Strict {
		rep := &Report{Path: name}
		checkLayer(conn, rep)
		if !rep.OK() {
			conn.Close()
			release()
			return nil, fileError("open layer", name, fmt.Errorf("strictly: %s: %w", strings.Join(rep.Problems, "; "), disklayer.ErrCorrupt))
		}
	}
	f, err = newFile(conn, name, true, false)
	if err != nil {
		conn.Close()
		release()
		return nil, err
	}
	f.eng.release = release
	if c := opts.Closer; c != nil {
		f.eng.release = func() {
			release()
			c.Close()
		}
	}
	f.eng.readerSize = r.Size()
	// Only a file out of WAL mode is opened here: read-only is sealed.
	f.eng.info.Sealed = f.eng.info.ReadOnly
	return f, nil
}

// checkReaderLength is checkFileLength for a layer's bytes in r (which
// OpenReaderAt refuses in WAL mode, so the header's page count holds).
func checkReaderLength(name string, r SizeReaderAt) error {
	var b [store.HeaderSize]byte
	if n, err := r.ReadAt(b[:], 0); n < len(b) {
		if err == nil || err == io.EOF {
			return fmt.Errorf("%d bytes, shorter than an SQLite header: %w", r.Size(), disklayer.ErrNotLayer)
		}
		return err
	}
	h, err := store.ParseHeader(name, b[:])
	if err != nil {
		return mapStoreError(err)
	}
	if !h.PageCountValid() || h.WAL() {
		return nil // store.OpenReaderAt refuses WAL mode
	}
	if want := int64(h.PageCount) * int64(h.PageSize); r.Size() < want {
		return fmt.Errorf("%d bytes, its header says %d pages of %d bytes (%d bytes): truncated: %w", r.Size(), h.PageCount, h.PageSize, want, disklayer.ErrCorrupt)
	}
	return nil
}
