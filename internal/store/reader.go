package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"github.com/ncruces/go-sqlite3"
	"github.com/ncruces/go-sqlite3/vfs/readervfs"
)

// OpenReaderAt opens, read-only, the database whose file's bytes r holds
// (size bytes of them): a sealed layer read from a blob. SQLite reads it
// through readervfs, which serves an io.ReaderAt as an immutable
// database with no journal, no WAL and no locks. So a database in WAL
// mode is refused (its bytes alone may lack commits still in its -wal
// file, which readervfs would not see); the caller is to seal it
// first. name is how errors call the database. Call release after
// closing the connection.
//
// The checks of Open apply: the application_id, and a schema neither
// newer than this build nor older than opts.ReadableFrom.
func OpenReaderAt(name string, r io.ReaderAt, size int64, opts Options) (conn *sqlite3.Conn, release func(), err error) {
	var b [HeaderSize]byte
	if n, err := r.ReadAt(b[:], 0); n < len(b) {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("read header of %q: shorter than %d bytes: %w", name, HeaderSize, ErrNotSQLite)
		}
		return nil, nil, fmt.Errorf("read header of %q: %w", name, err)
	}
	h, err := ParseHeader(name, b[:])
	if err != nil {
		return nil, nil, err
	}
	if h.ApplicationID != ApplicationID {
		return nil, nil, fmt.Errorf("open %q: application_id %#x, want %#x: %w", name, h.ApplicationID, ApplicationID, ErrOtherApplication)
	}
	if h.WAL() {
		return nil, nil, fmt.Errorf("open %q: %w", name, ErrWAL)
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, nil, fmt.Errorf("open %q: %w", name, err)
	}
	// readervfs finds the reader by this name, in a map of its own
	// shared by the whole process.
	vfsName := "hibdisk-reader-" + hex.EncodeToString(id[:])
	readervfs.Create(vfsName, sizeReaderAt{r, size})
	release = func() { readervfs.Delete(vfsName) }
	opts.ReadOnly = true
	conn, err = openURI(name, "file:"+vfsName+"?vfs=reader&mode=ro", opts)
	if err != nil {
		release()
		return nil, nil, err
	}
	if err := prepareExisting(conn, name, opts); err != nil {
		conn.Close()
		release()
		return nil, nil, err
	}
	return conn, release, nil
}

// ErrWAL: OpenReaderAt of a database in WAL mode.
var ErrWAL = errors.New("database in WAL mode: its file alone may lack commits still in its WAL; seal it (journal_mode=DELETE) before reading it from a blob")

// sizeReaderAt is what readervfs wants of a reader.
type sizeReaderAt struct {
	io.ReaderAt
	size int64
}

func (r sizeReaderAt) Size() (int64, error) { return r.size, nil }
