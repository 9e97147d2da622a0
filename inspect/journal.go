package inspect

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/diskfs/go-diskfs/backend"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/inspect/jbd2"
)

// ext4 filesystems are read through their replayed journal: a live
// snapshot's newest metadata is still in the jbd2 journal, which
// go-diskfs does not replay. Package jbd2 replays it in memory and an
// ext4View lays it over the Storage, so go-diskfs, extRaw and Diff all
// see the filesystem the kernel would mount.

// ext4View is an ext4 filesystem's view of the disk: the Storage, or
// the Storage with the journal replayed over it.
type ext4View struct {
	store    backend.Storage
	journal  *jbd2.View // nil: nothing replayed
	warnings []string
}

// replays caches one ext4View per filesystem start offset: replay reads
// the whole live journal, which should happen once per Image.
type replays struct {
	mu    sync.Mutex
	views map[int64]*ext4View
}

// ext4At returns the view of the ext4 filesystem starting at start.
func (im *Image) ext4At(start int64) *ext4View {
	im.replays.mu.Lock()
	defer im.replays.mu.Unlock()
	if v, ok := im.replays.views[start]; ok {
		return v
	}
	if im.replays.views == nil {
		im.replays.views = map[int64]*ext4View{}
	}
	v := newExt4View(im.store, start)
	im.replays.views[start] = v
	return v
}

func newExt4View(s *Storage, start int64) *ext4View {
	jv, err := jbd2.Replay(s, start)
	if err != nil {
		return &ext4View{store: s, warnings: []string{fmt.Sprintf(
			"ext4 journal needs recovery but cannot be replayed (%v): recent changes may be missing or stale", err)}}
	}
	v := &ext4View{store: s}
	for _, w := range jv.Info.Warnings {
		v.warnings = append(v.warnings, "ext4 journal replay: "+w)
	}
	if jv.Info.NeedsRecovery {
		v.journal = jv
		v.store = &replayedStorage{Storage: s, view: jv}
	}
	return v
}

// replayedRanges are the disk byte ranges whose content the replay
// changed, sorted.
func (v *ext4View) replayedRanges(start int64) []disklayer.Range {
	if v == nil || v.journal == nil {
		return nil
	}
	bs := v.journal.BlockSize()
	var out []disklayer.Range
	for _, b := range v.journal.Blocks() {
		out = append(out, disklayer.Range{Off: start + int64(b)*bs, Len: bs})
	}
	return out
}

// mergeRanges returns the sorted union of range lists.
func mergeRanges(lists ...[]disklayer.Range) []disklayer.Range {
	var all []disklayer.Range
	for _, l := range lists {
		all = append(all, l...)
	}
	slices.SortFunc(all, func(a, b disklayer.Range) int { return cmp.Compare(a.Off, b.Off) })
	var out []disklayer.Range
	for _, r := range all {
		if n := len(out); n > 0 && r.Off <= out[n-1].End() {
			out[n-1].Len = max(out[n-1].End(), r.End()) - out[n-1].Off
			continue
		}
		out = append(out, r)
	}
	return out
}

// replayedStorage is the Storage with a replayed journal over it: reads
// go through the jbd2 View, everything else (read-only, name, size) is
// the Storage's.
type replayedStorage struct {
	*Storage
	view *jbd2.View

	mu  sync.Mutex
	pos int64
}

// ReadAt reads the replayed filesystem.
func (s *replayedStorage) ReadAt(p []byte, off int64) (int, error) {
	return s.view.ReadAt(p, off)
}

// Read reads from the position Seek set.
func (s *replayedStorage) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.view.ReadAt(p, s.pos)
	s.pos += int64(n)
	return n, err
}

// Seek sets the position for Read.
func (s *replayedStorage) Seek(offset int64, whence int) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += s.pos
	case io.SeekEnd:
		offset += s.layer.Size()
	default:
		return 0, fmt.Errorf("seek %s: whence %d: %w", s.name, whence, disklayer.ErrInvalid)
	}
	if offset < 0 {
		return 0, fmt.Errorf("seek %s to %d: %w", s.name, offset, disklayer.ErrOutOfRange)
	}
	s.pos = offset
	return offset, nil
}
