package inspect

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
)

// FS is one filesystem of an Image, read-only, with one path syntax.
type FS struct {
	kind        Kind
	fsys        filesystem.FileSystem
	ext         *extRaw   // ext4 only
	view        *ext4View // ext4 only: the disk as read, journal replayed
	warnings    []string
	index       int
	start, size int64
}

// Entry is a file's metadata, the same shape for every filesystem.
type Entry struct {
	Name    string      `json:"name"`
	Path    string      `json:"path"` // "/a/b"
	Mode    fs.FileMode `json:"-"`
	Size    int64       `json:"size"`
	ModTime time.Time   `json:"mtime"`
	// HasOwner is false where the filesystem has no owners (FAT, ISO9660
	// without Rock Ridge); UID and GID are then zero.
	HasOwner bool   `json:"-"`
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
	Link     string `json:"link,omitempty"` // symlink target
	inode    uint32 // ext4: for footprint
}

// IsDir reports whether e is a directory.
func (e Entry) IsDir() bool { return e.Mode.IsDir() }

// Kind is the filesystem type.
func (f *FS) Kind() Kind { return f.kind }

// Partition is the partition index the filesystem is on (0: whole disk).
func (f *FS) Partition() int { return f.index }

// Label is the volume label, without padding.
func (f *FS) Label() string { return strings.TrimSpace(f.fsys.Label()) }

// Warnings are things a reader should know about what it sees, such as
// an ext4 journal that needs recovery.
func (f *FS) Warnings() []string { return slices.Clone(f.warnings) }

// Clean turns a user's path into this package's form: "." for the root,
// else "a/b" (no leading or trailing slash). It accepts "", "/", "a/b",
// "/a/b/", and resolves "." and ".." lexically; climbing above the root
// is an error.
func Clean(p string) (string, error) {
	c := path.Clean("/" + p)
	// path.Clean of a rooted path never keeps "..", so check the input.
	depth := 0
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "", ".":
		case "..":
			if depth == 0 {
				return "", fmt.Errorf("path %q climbs above the root: %w", p, fs.ErrInvalid)
			}
			depth--
		default:
			depth++
		}
	}
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

// display is the form paths are shown in: "/a/b".
func display(clean string) string {
	if clean == "." {
		return "/"
	}
	return "/" + clean
}

// Stat describes the file at p.
func (f *FS) Stat(p string) (Entry, error) {
	clean, err := Clean(p)
	if err != nil {
		return Entry{}, err
	}
	return f.stat(clean)
}

// stat resolves clean one directory at a time from the root, so a
// missing directory on the way is "does not exist", and FAT names match
// case-insensitively at every level. Symbolic links on the way are
// followed (the last component is not: see resolve).
func (f *FS) stat(clean string) (Entry, error) {
	hops := 0
	return f.resolve(clean, false, &hops)
}

// maxSymlinkHops bounds the symbolic links one path may go through, as
// Linux's 40 does (ELOOP).
const maxSymlinkHops = 40

// resolve is stat that also follows a symbolic link in the last
// component when followLast is set. Links resolve inside the image, as
// virt-cat's do: an absolute target starts at the image's root, and ".."
// at the root stays there.
func (f *FS) resolve(clean string, followLast bool, hops *int) (Entry, error) {
	cur, err := f.root()
	if err != nil || clean == "." {
		return cur, err
	}
	names := strings.Split(clean, "/")
	for i, name := range names {
		if !cur.IsDir() {
			return Entry{}, fmt.Errorf("%s: %s is not a directory: %w", display(clean), cur.Path, ErrNotExist)
		}
		entries, err := f.readDir(strings.TrimPrefix(cur.Path, "/"))
		if err != nil {
			return Entry{}, err
		}
		next, ok := f.lookup(entries, name)
		if !ok {
			return Entry{}, fmt.Errorf("%s: %w", display(clean), ErrNotExist)
		}
		if next.Mode&fs.ModeSymlink != 0 && next.Link != "" && (i < len(names)-1 || followLast) {
			if *hops++; *hops > maxSymlinkHops {
				return Entry{}, fmt.Errorf("%s: more than %d symbolic links: %w", display(clean), maxSymlinkHops, fs.ErrInvalid)
			}
			target := next.Link
			if !strings.HasPrefix(target, "/") {
				target = path.Join(path.Dir(next.Path), target)
			}
			rest := path.Join(append([]string{target}, names[i+1:]...)...)
			return f.resolve(strings.TrimPrefix(path.Clean("/"+rest), "/"), followLast, hops)
		}
		cur = next
	}
	return cur, nil
}

// lookup finds name among a directory's entries.
func (f *FS) lookup(entries []Entry, name string) (Entry, bool) {
	for _, e := range entries {
		if e.Name == name {
			return e, true
		}
	}
	if f.caseInsensitive() {
		for _, e := range entries {
			if strings.EqualFold(e.Name, name) {
				return e, true
			}
		}
	}
	return Entry{}, false
}

func (f *FS) caseInsensitive() bool {
	return f.kind == KindFAT12 || f.kind == KindFAT16 || f.kind == KindFAT32
}

// root describes the root directory.
func (f *FS) root() (Entry, error) {
	e := Entry{Name: "/", Path: "/", Mode: fs.ModeDir | 0o755}
	if f.ext != nil {
		mode, err := f.ext.mode(2)
		if err != nil {
			return Entry{}, fmt.Errorf("/: %w", err)
		}
		e.Mode, e.inode = mode, 2
	}
	return e, nil
}

// ReadDir lists the directory at p, sorted by name.
func (f *FS) ReadDir(p string) ([]Entry, error) {
	clean, err := Clean(p)
	if err != nil {
		return nil, err
	}
	if clean != "." {
		e, err := f.stat(clean)
		if err != nil {
			return nil, err
		}
		if !e.IsDir() {
			return nil, fmt.Errorf("%s: %w", display(clean), ErrNotDir)
		}
		clean = strings.TrimPrefix(e.Path, "/") // FAT: the name as stored
	}
	return f.readDir(clean)
}

func (f *FS) readDir(clean string) ([]Entry, error) {
	if clean == "" {
		clean = "."
	}
	des, err := f.fsys.ReadDir(clean)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %v: %w", display(clean), err, ErrCorrupt)
	}
	out := make([]Entry, 0, len(des))
	for _, de := range des {
		info, err := de.Info()
		if err != nil {
			return nil, fmt.Errorf("read directory %s: %s: %v: %w", display(clean), de.Name(), err, ErrCorrupt)
		}
		e, err := f.entry(clean, info)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// entry converts go-diskfs's FileInfo into an Entry.
func (f *FS) entry(dir string, info fs.FileInfo) (Entry, error) {
	e := Entry{Name: info.Name(), Size: info.Size(), ModTime: info.ModTime().UTC(), Mode: info.Mode()}
	if dir == "." {
		e.Path = "/" + e.Name
	} else {
		e.Path = "/" + dir + "/" + e.Name
	}
	switch st := info.Sys().(type) {
	case *ext4.StatT:
		e.HasOwner, e.UID, e.GID, e.Link, e.inode = true, st.UID, st.GID, st.LinkTarget, st.Ino
		// go-diskfs's ext4 directory entries carry the file type only.
		mode, err := f.ext.mode(st.Ino)
		if err != nil {
			return Entry{}, fmt.Errorf("%s: %w", e.Path, err)
		}
		e.Mode = mode
	case *squashfs.StatT:
		e.HasOwner, e.UID, e.GID, e.Link = true, st.UID, st.GID, st.LinkTarget
	case *iso9660.StatT:
		if st.RockRidge {
			e.HasOwner, e.UID, e.GID, e.Link = true, st.UID, st.GID, st.LinkTarget
		}
	}
	switch {
	case f.caseInsensitive() && info.IsDir():
		// FAT has no permissions: show what Linux's vfat shows by default.
		e.Mode = fs.ModeDir | 0o755
	case f.caseInsensitive():
		e.Mode = 0o644
	case info.IsDir():
		e.Mode |= fs.ModeDir
	}
	if e.IsDir() {
		e.Size = 0 // directory sizes are layout details that differ by filesystem
	}
	return e, nil
}

// Open opens the regular file at p for reading, following symbolic
// links inside the image.
func (f *FS) Open(p string) (io.ReadCloser, error) {
	clean, err := Clean(p)
	if err != nil {
		return nil, err
	}
	hops := 0
	e, err := f.resolve(clean, true, &hops)
	if err != nil {
		return nil, err
	}
	return f.openEntry(e)
}

// openEntry opens a file whose Entry the caller has (from a walk),
// without resolving its path again: on a large directory each
// resolution re-reads the whole directory.
func (f *FS) openEntry(e Entry) (io.ReadCloser, error) {
	if e.IsDir() {
		return nil, fmt.Errorf("%s: %w", e.Path, ErrIsDir)
	}
	if !e.Mode.IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s): %w", e.Path, e.Mode.Type(), fs.ErrInvalid)
	}
	file, err := f.fsys.Open(strings.TrimPrefix(e.Path, "/"))
	if err != nil {
		return nil, fmt.Errorf("open %s: %v: %w", e.Path, err, ErrCorrupt)
	}
	return &fileReader{File: file, path: e.Path, left: e.Size}, nil
}

// fileReader reads exactly the file's size, turning go-diskfs errors
// into wrapped ones. It reads go-diskfs in whole chunks of readChunk
// bytes, so every read starts at a multiple of the block size: go-diskfs
// v1.9.4's ext4 File.Read panics (a negative slice length) when a read
// starts inside a block right after the end of an extent, which the
// kernel's appends produce.
type fileReader struct {
	fs.File
	path    string
	left    int64  // bytes of the file not yet read from go-diskfs
	buf     []byte // read from go-diskfs, not yet returned
	pending []byte
}

// readChunk is a multiple of every ext4 block size (1 KiB to 64 KiB).
const readChunk = 64 << 10

func (r *fileReader) Read(p []byte) (int, error) {
	if len(r.pending) == 0 {
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}

// fill reads the next chunk of the file into pending.
func (r *fileReader) fill() error {
	if r.left <= 0 {
		return io.EOF
	}
	if r.buf == nil {
		r.buf = make([]byte, readChunk)
	}
	want := r.buf[:min(int64(readChunk), r.left)]
	n, err := r.File.Read(want)
	r.left -= int64(n)
	r.pending = want[:n]
	switch {
	case err != nil && !errors.Is(err, io.EOF):
		return fmt.Errorf("read %s: %w", r.path, err)
	case n == 0 && r.left > 0:
		return fmt.Errorf("read %s: %d bytes short: %w", r.path, r.left, io.ErrUnexpectedEOF)
	}
	return nil
}

// WalkFunc is called for each entry Walk visits. Returning fs.SkipDir
// from a directory skips its contents.
type WalkFunc func(e Entry) error

// Walk visits p and everything below it, depth first, each directory's
// entries in name order, a directory before its contents.
func (f *FS) Walk(p string, fn WalkFunc) error {
	e, err := f.Stat(p)
	if err != nil {
		return err
	}
	return f.walk(e, fn)
}

func (f *FS) walk(e Entry, fn WalkFunc) error {
	err := fn(e)
	if !e.IsDir() {
		return err
	}
	if errors.Is(err, fs.SkipDir) {
		return nil
	}
	if err != nil {
		return err
	}
	clean, _ := Clean(e.Path)
	entries, err := f.readDir(clean)
	if err != nil {
		return err
	}
	for _, child := range entries {
		if err := f.walk(child, fn); err != nil {
			return err
		}
	}
	return nil
}
