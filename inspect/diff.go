package inspect

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// RangeDiff is where two byte-addressed views (disks, hibernate files)
// differ, in units of Unit bytes (the larger of their sector sizes).
type RangeDiff struct {
	SizeA   int64             `json:"size_a"`
	SizeB   int64             `json:"size_b"`
	Unit    int64             `json:"unit"`
	Changed []disklayer.Range `json:"changed"` // sorted, merged
	// ChangedBytes is the sum of the Changed lengths.
	ChangedBytes int64 `json:"changed_bytes"`
}

// FileMeta is one side of a file in a Diff.
type FileMeta struct {
	Path    string    `json:"path"`
	Type    string    `json:"type"` // "file", "dir", "symlink", "device", "fifo", "socket"
	Mode    string    `json:"mode"` // permission bits in octal, "0644"
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	UID     uint32    `json:"uid"`
	GID     uint32    `json:"gid"`
	Link    string    `json:"link,omitempty"`
	SHA256  string    `json:"sha256,omitempty"` // only when content was compared
}

// FileChange is a path present on both sides that differs in Fields:
// "type", "mode", "size", "mtime", "owner", "link", "content".
type FileChange struct {
	Path   string   `json:"path"`
	Fields []string `json:"fields"`
	A      FileMeta `json:"a"`
	B      FileMeta `json:"b"`
}

// FSDiff is the file-level difference of one filesystem present on both
// sides (same partition index, same kind).
type FSDiff struct {
	Partition int      `json:"partition"`
	Kind      Kind     `json:"fs"`
	Warnings  []string `json:"warnings,omitempty"`
	// Unchanged: no changed disk range touches the partition, so its
	// files were not walked.
	Unchanged bool         `json:"unchanged"`
	Added     []FileMeta   `json:"added"`
	Removed   []FileMeta   `json:"removed"`
	Changed   []FileChange `json:"changed"`
}

// Report is the result of Diff.
type Report struct {
	// FastPath: one image is a diff chain over the other, so only the
	// sectors its own layers store were compared.
	FastPath bool      `json:"fast_path"`
	Disk     RangeDiff `json:"disk"`
	// Hibernate is nil unless both images are hibdisk layers (raw images
	// have no hibernate file).
	Hibernate   *RangeDiff `json:"hibernate"`
	Filesystems []FSDiff   `json:"filesystems"`
	// Skipped names filesystems present on only one side, or that could
	// not be opened on one side, with why.
	Skipped []string `json:"skipped,omitempty"`
}

// Diff compares two images the way virt-diff does, without a VM: the disk
// sectors, the hibernate file blocks, and the files of each filesystem
// present on both sides. When one image's chain is the other's chain
// with layers on top, only what those top layers store can differ, and
// only that is read.
func Diff(a, b *diffdisk.Disk) (*Report, error) {
	rep := &Report{}
	own, reversed := overlayOf(a, b)
	rep.FastPath = own > 0
	var candidates []disklayer.Range
	if rep.FastPath {
		top := b
		if reversed {
			top = a
		}
		var err error
		if candidates, err = ownRanges(top, own, min(a.Size(), b.Size())); err != nil {
			return nil, fmt.Errorf("diff: %w", err)
		}
	}
	disk, err := diffRanges(a, b, candidates, rep.FastPath)
	if err != nil {
		return nil, fmt.Errorf("diff disks: %w", err)
	}
	rep.Disk = disk
	if rep.Hibernate, err = diffHibernate(a, b, own, reversed); err != nil {
		return nil, err
	}
	if err := diffFilesystems(rep, a, b); err != nil {
		return nil, err
	}
	return rep, nil
}

// overlayOf reports whether b's chain is a's chain with own layers on
// top (or, reversed, a's is b's): then only those layers can differ.
func overlayOf(a, b *diffdisk.Disk) (own int, reversed bool) {
	if n := b.Depth() - a.Depth(); n > 0 && sameLayers(a, b, n) {
		return n, false
	}
	if n := a.Depth() - b.Depth(); n > 0 && sameLayers(b, a, n) {
		return n, true
	}
	return 0, false
}

// sameLayers: lower's layers are upper's layers below its top n.
func sameLayers(lower, upper *diffdisk.Disk, n int) bool {
	for i := range lower.Depth() {
		if !sameFile(lower.Layer(i), upper.Layer(n+i)) {
			return false
		}
	}
	return true
}

type pathed interface{ Path() string }

func sameFile(x, y disklayer.Layer) bool {
	px, ok1 := x.(pathed)
	py, ok2 := y.(pathed)
	if !ok1 || !ok2 {
		return false
	}
	sx, err1 := os.Stat(px.Path())
	sy, err2 := os.Stat(py.Path())
	if err1 != nil || err2 != nil || !os.SameFile(sx, sy) {
		return false
	}
	fx, ok1 := x.(*sqlitelayer.File)
	fy, ok2 := y.(*sqlitelayer.File)
	return ok1 == ok2 && (!ok1 || fx.Info().UUID == fy.Info().UUID)
}

// ownRanges is the union of what d's top n layers store (data and
// tombstones) within [0, limit).
func ownRanges(d *diffdisk.Disk, n int, limit int64) ([]disklayer.Range, error) {
	var out []disklayer.Range
	for i := range n {
		l := d.Layer(i)
		for e, err := range l.Extents(0, min(limit, l.Size())) {
			if err != nil {
				return nil, err
			}
			if e.Kind != disklayer.Absent {
				out = append(out, disklayer.Range{Off: e.Off, Len: e.Len})
			}
		}
	}
	return diffdisk.MergeRanges(out), nil
}

// diffRanges finds the units where a and b differ (diffdisk.Changes;
// with known, only the candidate ranges can differ and only they are
// read).
func diffRanges(a, b disklayer.Layer, candidates []disklayer.Range, known bool) (RangeDiff, error) {
	rd := RangeDiff{SizeA: a.Size(), SizeB: b.Size(), Unit: int64(max(a.SectorSize(), b.SectorSize()))}
	if !known {
		candidates = nil
	} else if candidates == nil {
		candidates = []disklayer.Range{}
	}
	changed, err := diffdisk.ChangedRanges(a, b, rd.Unit, candidates)
	if err != nil {
		return rd, err
	}
	rd.Changed = changed
	for _, r := range rd.Changed {
		rd.ChangedBytes += r.Len
	}
	return rd, nil
}

// diffHibernate compares the hibernate files when both images have one.
func diffHibernate(a, b *diffdisk.Disk, own int, reversed bool) (*RangeDiff, error) {
	ha, errA := a.Hibernate()
	hb, errB := b.Hibernate()
	if errA != nil || errB != nil {
		if ha != nil {
			ha.Close()
		}
		if hb != nil {
			hb.Close()
		}
		for _, err := range []error{errA, errB} {
			if err != nil && !errors.Is(err, disklayer.ErrNotLayer) {
				return nil, fmt.Errorf("diff hibernate files: %w", err)
			}
		}
		return nil, nil // a raw image has no hibernate file
	}
	defer ha.Close()
	defer hb.Close()
	// The fast path holds for the hibernate file when every layer of both
	// chains is a hibdisk layer, so the hibernate views stack the same.
	var candidates []disklayer.Range
	known := own > 0 && ha.Depth() == a.Depth() && hb.Depth() == b.Depth()
	if known {
		top := hb
		if reversed {
			top = ha
		}
		var err error
		if candidates, err = ownRanges(top, own, min(ha.Size(), hb.Size())); err != nil {
			return nil, fmt.Errorf("diff hibernate files: %w", err)
		}
	}
	rd, err := diffRanges(ha, hb, candidates, known)
	if err != nil {
		return nil, fmt.Errorf("diff hibernate files: %w", err)
	}
	return &rd, nil
}

// diffFilesystems diffs the files of each filesystem on both sides.
func diffFilesystems(rep *Report, a, b *diffdisk.Disk) error {
	ia, err := Open(a, "A")
	if err != nil {
		return err
	}
	ib, err := Open(b, "B")
	if err != nil {
		return err
	}
	pa, err := ia.Partitions()
	if err != nil {
		return err
	}
	pb, err := ib.Partitions()
	if err != nil {
		return err
	}
	byIndex := map[int]Partition{}
	for _, p := range pb {
		byIndex[p.Index] = p
	}
	for _, p := range pa {
		q, ok := byIndex[p.Index]
		delete(byIndex, p.Index)
		switch {
		case p.FS == KindNone && (!ok || q.FS == KindNone):
			continue
		case !ok || q.FS != p.FS || q.Start != p.Start:
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: %s in A, %s in B", where(p.Index), fsName(p, true), fsName(q, ok)))
			continue
		}
		fd, err := diffFS(ia, ib, p, rep.Disk.Changed)
		if err != nil {
			rep.Skipped = append(rep.Skipped, err.Error())
			continue
		}
		rep.Filesystems = append(rep.Filesystems, *fd)
	}
	var rest []int
	for i, q := range byIndex {
		if q.FS != KindNone {
			rest = append(rest, i)
		}
	}
	sort.Ints(rest)
	for _, i := range rest {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: none in A, %s in B", where(i), fsName(byIndex[i], true)))
	}
	return nil
}

func fsName(p Partition, present bool) string {
	if !present {
		return "no partition"
	}
	if p.FS == KindNone {
		return "no filesystem"
	}
	return string(p.FS)
}

// diffFS diffs one filesystem present on both sides.
func diffFS(ia, ib *Image, p Partition, changed []disklayer.Range) (*FSDiff, error) {
	fd := &FSDiff{Partition: p.Index, Kind: p.FS, Added: []FileMeta{}, Removed: []FileMeta{}, Changed: []FileChange{}}
	if !intersects(changed, disklayer.Range{Off: p.Start, Len: p.Size}) {
		fd.Unchanged = true
		return fd, nil
	}
	fa, err := ia.FS(p.Index)
	if err != nil {
		return nil, fmt.Errorf("image A: %w", err)
	}
	fb, err := ib.FS(p.Index)
	if err != nil {
		return nil, fmt.Errorf("image B: %w", err)
	}
	fd.Warnings = append(fa.Warnings(), fb.Warnings()...)
	// A replayed journal changes blocks that are the same on disk.
	changed = mergeRanges(changed, fa.view.replayedRanges(fa.start), fb.view.replayedRanges(fb.start))
	ea, err := entries(fa)
	if err != nil {
		return nil, fmt.Errorf("image A: %s: %w", where(p.Index), err)
	}
	eb, err := entries(fb)
	if err != nil {
		return nil, fmt.Errorf("image B: %s: %w", where(p.Index), err)
	}
	for _, path := range sortedKeys(ea) {
		x := ea[path]
		y, ok := eb[path]
		if !ok {
			fd.Removed = append(fd.Removed, meta(x))
			continue
		}
		fc, err := compareEntries(fa, fb, x, y, changed)
		if err != nil {
			return nil, err
		}
		if fc != nil {
			fd.Changed = append(fd.Changed, *fc)
		}
	}
	for _, path := range sortedKeys(eb) {
		if _, ok := ea[path]; !ok {
			fd.Added = append(fd.Added, meta(eb[path]))
		}
	}
	return fd, nil
}

func entries(f *FS) (map[string]Entry, error) {
	out := map[string]Entry{}
	err := f.Walk("/", func(e Entry) error {
		if e.Path != "/" {
			out[e.Path] = e
		}
		return nil
	})
	return out, err
}

func sortedKeys(m map[string]Entry) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// compareEntries returns what differs between two versions of a path, or
// nil. Content is compared only for regular files of equal size, and on
// ext4 only when the file's inode, extent tree or data blocks overlap a
// changed range on either side (otherwise the bytes are the same ones).
func compareEntries(fa, fb *FS, x, y Entry, changed []disklayer.Range) (*FileChange, error) {
	fc := &FileChange{Path: x.Path, A: meta(x), B: meta(y)}
	if x.Mode.Type() != y.Mode.Type() {
		fc.Fields = append(fc.Fields, "type")
	}
	if x.Mode.Perm() != y.Mode.Perm() || x.Mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != y.Mode&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) {
		fc.Fields = append(fc.Fields, "mode")
	}
	if x.Size != y.Size {
		fc.Fields = append(fc.Fields, "size")
	}
	if !x.ModTime.Equal(y.ModTime) {
		fc.Fields = append(fc.Fields, "mtime")
	}
	if x.UID != y.UID || x.GID != y.GID {
		fc.Fields = append(fc.Fields, "owner")
	}
	if x.Link != y.Link {
		fc.Fields = append(fc.Fields, "link")
	}
	if x.Mode.IsRegular() && y.Mode.IsRegular() && x.Size == y.Size {
		same, err := sameFootprint(fa, fb, x, y, changed)
		if err != nil {
			return nil, err
		}
		if !same {
			ha, err := hashFile(fa, x)
			if err != nil {
				return nil, err
			}
			hb, err := hashFile(fb, y)
			if err != nil {
				return nil, err
			}
			fc.A.SHA256, fc.B.SHA256 = ha, hb
			if ha != hb {
				fc.Fields = append(fc.Fields, "content")
			}
		}
	}
	if len(fc.Fields) == 0 {
		return nil, nil
	}
	return fc, nil
}

// sameFootprint reports whether a file's content is certainly the same
// on both sides without reading it: ext4 only, when neither side's
// inode, extent tree or data blocks overlap a changed range.
func sameFootprint(fa, fb *FS, x, y Entry, changed []disklayer.Range) (bool, error) {
	if fa.ext == nil || fb.ext == nil || x.inode == 0 || y.inode == 0 {
		return false, nil
	}
	for _, side := range []struct {
		f   *FS
		ino uint32
	}{{fa, x.inode}, {fb, y.inode}} {
		ranges, ok, err := side.f.ext.footprint(side.ino)
		if err != nil || !ok {
			return false, nil // unknown layout: compare the bytes
		}
		for _, r := range ranges {
			if intersects(changed, disklayer.Range{Off: r.Off, Len: r.Len}) {
				return false, nil
			}
		}
	}
	return true, nil
}

// intersects reports whether r overlaps any of the sorted ranges rs.
func intersects(rs []disklayer.Range, r disklayer.Range) bool {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].End() > r.Off })
	return i < len(rs) && rs[i].Off < r.End()
}

func hashFile(f *FS, e Entry) (string, error) {
	r, err := f.openEntry(e)
	if err != nil {
		return "", err
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func meta(e Entry) FileMeta {
	return FileMeta{Path: e.Path, Type: typeName(e.Mode), Mode: fmt.Sprintf("%04o", uint32(e.Mode.Perm())|special(e.Mode)),
		Size: e.Size, ModTime: e.ModTime, UID: e.UID, GID: e.GID, Link: e.Link}
}

func special(m fs.FileMode) uint32 {
	var s uint32
	if m&fs.ModeSetuid != 0 {
		s |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		s |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		s |= 0o1000
	}
	return s
}

func typeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeDevice != 0:
		return "device"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	}
	return "file"
}
