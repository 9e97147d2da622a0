package sqlitelayer

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/internal/lock"
	"github.com/hibdisk/hibdisk/internal/schema"
	"github.com/hibdisk/hibdisk/internal/store"
)

// Sealing (docs/remote-work.md): a sealed layer is one whose file's bytes
// never change again, so that the SHA-256 of the file is its identity
// (what a registry stores it by, and what a child records of it). Seal
// folds the WAL, compacts the layer into a new file (VACUUM INTO), marks
// that copy read-only and takes it out of WAL mode (a reader that cannot
// see a WAL, ncruces' readervfs, reads it whole; bytes 18-19 of its
// header become 1), syncs it and renames it over the layer. A sealed
// layer is recognised by both marks: read_only = 1 and not in WAL mode.
// Nothing opens it writable (Open refuses), since setting WAL mode alone
// would change its bytes.
//
// Sealing changes neither the uuid nor the generation (VACUUM INTO copies
// the layer row as it is; setting read_only and the parent's digest are
// not content changes, generation.go), so the children of a layer keep
// opening after it was sealed.

// DigestPrefix starts every layer digest: "sha256:" and 64 hex digits.
const DigestPrefix = "sha256:"

// ValidDigest reports whether s is "sha256:" followed by 64 lower-case
// hex digits.
func ValidDigest(s string) bool {
	h, ok := strings.CutPrefix(s, DigestPrefix)
	if !ok || len(h) != 2*sha256.Size {
		return false
	}
	for _, c := range h {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Sealed is what Seal did to one layer.
type Sealed struct {
	Path   string
	Digest string // "sha256:<hex>" of the file
	Size   int64  // the file's bytes
	// Already: the layer was sealed before; Seal did not rewrite it.
	Already bool
}

// SealOptions say what Seal records in the layer.
type SealOptions struct {
	// ParentSHA256 is the digest of the layer's (sealed) hibdisk parent,
	// recorded in its parent reference before it is sealed; "" for a
	// base or a parent of another format. A layer already sealed must
	// have recorded this very digest.
	ParentSHA256 string
	// Digest, when set, computes the file's digest in place of
	// FileDigest (push digests its chunks in the same read). It is given
	// the sealed file, under a temporary name when Seal just made it.
	Digest func(path string) (digest string, size int64, err error)
}

func (o SealOptions) digest(path string) (string, int64, error) {
	if o.Digest != nil {
		return o.Digest(path)
	}
	return FileDigest(path)
}

// Seal seals the layer at path (see above) and returns its digest. A
// layer already sealed is not rewritten: its digest is computed and
// returned, so Seal is idempotent. A layer someone else holds (a serve,
// a vm run) is refused with an error wrapping lock.ErrInUse that names
// the holder. Seal does not look at the parent beyond recording its
// digest: sealing a chain bottom-up is diffdisk.Seal's.
func Seal(path string, opts SealOptions) (Sealed, error) {
	if opts.ParentSHA256 != "" && !ValidDigest(opts.ParentSHA256) {
		return Sealed{}, fmt.Errorf("seal %q: parent digest %q is not sha256:<64 hex digits>: %w", path, opts.ParentSHA256, disklayer.ErrInvalid)
	}
	sealed, err := isSealed(path)
	if err != nil {
		return Sealed{}, fmt.Errorf("seal %q: %w", path, err)
	}
	if sealed {
		return resealed(path, opts)
	}
	s, err := sealNew(path, opts)
	if err != nil {
		return Sealed{}, fmt.Errorf("seal %q: %w", path, err)
	}
	return s, nil
}

// CheckUnheld refuses, as Seal would, a layer someone holds: an error
// wrapping lock.ErrInUse that names the holder. A chain's seal asks it
// of every layer before it seals the first, so a layer in use high in
// the chain does not leave the layers below it sealed and it not.
func CheckUnheld(path string) error {
	held, err := lock.Acquire(path, lock.Exclusive)
	if err != nil {
		return fmt.Errorf("seal %q: %w", path, err)
	}
	return held.Release()
}

// resealed is Seal of a layer already sealed: it checks that the layer
// recorded the parent digest asked for, and digests the file, holding it
// stable meanwhile.
func resealed(path string, opts SealOptions) (Sealed, error) {
	f, err := Open(path, OpenOptions{ReadOnly: true, HoldStable: true})
	if err != nil {
		return Sealed{}, fmt.Errorf("seal %q: %w", path, err)
	}
	defer f.Close()
	if opts.ParentSHA256 != "" {
		info := f.Info()
		if info.Parent == nil || info.Parent.SHA256 != opts.ParentSHA256 {
			recorded := "none"
			if info.Parent != nil && info.Parent.SHA256 != "" {
				recorded = info.Parent.SHA256
			}
			return Sealed{}, fmt.Errorf("seal %q: the layer was sealed over a parent with digest %s, its parent is now %s: %w", path, recorded, opts.ParentSHA256, disklayer.ErrParentMismatch)
		}
	}
	digest, size, err := opts.digest(path)
	if err != nil {
		return Sealed{}, fmt.Errorf("seal %q: %w", path, err)
	}
	return Sealed{Path: path, Digest: digest, Size: size, Already: true}, nil
}

// sealNew seals a layer that is not sealed yet.
func sealNew(path string, opts SealOptions) (s Sealed, err error) {
	f, err := Open(path, OpenOptions{})
	if err != nil {
		return Sealed{}, err
	}
	e := f.eng
	// The lock is kept past the close of the layer's connection, until
	// the sealed file is in place: nobody may write the old file between
	// the copy and the rename.
	held := e.held
	e.held = nil
	defer func() {
		if rerr := held.Release(); err == nil && rerr != nil {
			err = fmt.Errorf("release lock: %w", rerr)
		}
	}()
	var parent *disklayer.ParentRef
	if opts.ParentSHA256 != "" {
		info := f.Info()
		if info.Parent == nil || info.Parent.Format != disklayer.FormatHibdisk {
			f.Close()
			return Sealed{}, fmt.Errorf("a parent digest was given for a layer without a hibdisk parent: %w", disklayer.ErrInvalid)
		}
		if info.Parent.SHA256 != opts.ParentSHA256 {
			ref := *info.Parent
			ref.SHA256 = opts.ParentSHA256
			parent = &ref // recorded in the copy (markSealed)
		}
	}
	tmp, err := sealTempName(path)
	if err != nil {
		f.Close()
		return Sealed{}, err
	}
	defer func() {
		if err != nil {
			for _, p := range []string{tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"} {
				os.Remove(p)
			}
		}
	}()
	if err := f.vacuumInto(tmp); err != nil {
		f.Close()
		return Sealed{}, err
	}
	// Close folds the WAL into the old file and removes it: the new file
	// has all of it, and no WAL may be left beside it.
	if err := f.Close(); err != nil {
		return Sealed{}, err
	}
	if err := markSealed(tmp, parent); err != nil {
		return Sealed{}, err
	}
	if err := syncFile(tmp); err != nil {
		return Sealed{}, err
	}
	digest, size, err := opts.digest(tmp)
	if err != nil {
		return Sealed{}, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return Sealed{}, err
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return Sealed{}, fmt.Errorf("sync directory of %q: %w", path, err)
	}
	return Sealed{Path: path, Digest: digest, Size: size}, nil
}

// vacuumInto commits the open batch and copies the layer, compacted, into
// a new database file at dst.
func (f *File) vacuumInto(dst string) error {
	e := f.eng
	e.lock()
	defer e.mu.Unlock()
	if err := e.usable("seal"); err != nil {
		return err
	}
	if err := e.commitLocked("seal"); err != nil {
		return err
	}
	stmt, _, err := e.conn.Prepare("VACUUM INTO ?1")
	if err != nil {
		return mapStoreError(err)
	}
	defer stmt.Close()
	stmt.BindText(1, dst)
	if err := stmt.Exec(); err != nil {
		return fmt.Errorf("vacuum into %q: %w", dst, mapStoreError(err))
	}
	return nil
}

// markSealed sets read_only = 1 and a rollback journal in the database
// at path, which nobody else has open, and writes its allocation summary
// (a sealed layer, lazily read, maps a region from a few pages of the
// summary instead of fetching the region's leaves), and parent, when not
// nil, as its parent reference (the parent's digest recorded). Done on
// the copy, the layer being sealed is not written: a reader that has it
// open (info, map) keeps its WAL empty, and a seal that fails leaves it
// as it was.
func markSealed(path string, parent *disklayer.ParentRef) error {
	uri, err := store.FileURI(path, "rw")
	if err != nil {
		return err
	}
	conn, err := sqlite3.Open(uri)
	if err != nil {
		return fmt.Errorf("open %q: %w", path, err)
	}
	err = conn.Exec("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; BEGIN IMMEDIATE")
	if err == nil {
		err = writeSummary(conn)
	}
	if err == nil && parent != nil {
		err = updateParent(conn, parent)
	}
	if err == nil {
		err = conn.Exec("UPDATE layer SET read_only = 1; COMMIT")
	}
	if cerr := conn.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("mark %q sealed: %w", path, mapStoreError(err))
	}
	h, err := store.ReadHeader(path)
	if err != nil {
		return err
	}
	if h.WAL() {
		return fmt.Errorf("mark %q sealed: the file is still in WAL mode", path)
	}
	return nil
}

// syncFile fsyncs the file at path.
func syncFile(path string) error {
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := fh.Sync(); err != nil {
		return fmt.Errorf("sync %q: %w", path, err)
	}
	return nil
}

// FileDigest returns the "sha256:<hex>" digest of the file at path and
// its size: a sealed layer's identity.
func FileDigest(path string) (string, int64, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer fh.Close()
	return digestOf(fh)
}

func digestOf(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", 0, err
	}
	return DigestPrefix + hex.EncodeToString(h.Sum(nil)), n, nil
}

// isSealed reports whether the layer at path is sealed: out of WAL mode
// and marked read-only. Only a file out of WAL mode (rare: sealed, or a
// layer from before WAL) is opened to read the mark.
func isSealed(path string) (bool, error) {
	h, err := store.ReadHeader(path)
	if err != nil {
		return false, mapStoreError(err)
	}
	if h.WAL() {
		return false, nil
	}
	if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > 0 {
		return false, nil // a WAL beside it: not sealed, whatever the header says
	}
	held, err := lock.Acquire(path, lock.Shared)
	if err != nil {
		return false, err
	}
	defer held.Release()
	conn, err := store.Open(path, store.Options{ReadOnly: true, Migrations: schema.History, ReadableFrom: schema.ReadableFrom})
	if err != nil {
		return false, mapStoreError(err)
	}
	defer conn.Close()
	stmt, _, err := conn.Prepare("SELECT read_only FROM layer")
	if err != nil {
		return false, mapStoreError(err)
	}
	defer stmt.Close()
	if !stmt.Step() {
		if err := stmt.Err(); err != nil {
			return false, mapStoreError(err)
		}
		return false, fmt.Errorf("layer row missing: %w", disklayer.ErrCorrupt)
	}
	return stmt.ColumnInt64(0) == 1, nil
}

// sealedError is the error of a writable open of a sealed layer.
func sealedError(path string) error {
	return fmt.Errorf("layer %q is sealed (read-only for good: its digest is its identity); write a diff layer over it instead: hibdisk create -b %s NEW.db: %w", path, path, disklayer.ErrReadOnly)
}

func sealTempName(path string) (string, error) {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".sealing-"+hex.EncodeToString(b[:])), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
