package diffdisk

import (
	"bytes"
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
)

// SkipUnchanged wraps d so that a write stores only the sectors whose
// content it changes: each whole sector of a write is compared with what
// the chain reads there now, and equal sectors are not written. In a
// diff layer over an older copy of the same data (a guest rewriting its
// hibernation image into the hibernate file of a layer stacked on the
// previous one) the top layer then holds only what changed, as if the
// writes had been deduplicated against the layers below. Each write
// costs a read of its range. Partial sectors at the ends are written as
// they are.
//
// A skipped write is indistinguishable from a write of the same bytes,
// also under concurrent writes: the comparison reads every write that
// completed before it (the chain's consistency contract), so a skipped
// write is ordered before any overlapping write it did not see.
func SkipUnchanged(d disklayer.Disk) disklayer.Disk { return &skipUnchanged{Disk: d} }

type skipUnchanged struct{ disklayer.Disk }

// ReadOnly passes the wrapped disk's answer on (nbddisk asks).
func (s *skipUnchanged) ReadOnly() bool {
	ro, ok := s.Disk.(interface{ ReadOnly() bool })
	return ok && ro.ReadOnly()
}

func (s *skipUnchanged) WriteAt(p []byte, off int64) (int, error) {
	ss := int64(s.SectorSize())
	head := (ss - off%ss) % ss
	if head >= int64(len(p)) || int64(len(p))-head < ss {
		return s.Disk.WriteAt(p, off)
	}
	whole := (int64(len(p)) - head) / ss * ss
	if head > 0 {
		if _, err := s.Disk.WriteAt(p[:head], off); err != nil {
			return 0, err
		}
	}
	if err := s.writeChanged(p[head:head+whole], off+head, ss); err != nil {
		return int(head), err
	}
	if rest := p[head+whole:]; len(rest) > 0 {
		if _, err := s.Disk.WriteAt(rest, off+head+whole); err != nil {
			return int(head + whole), err
		}
	}
	return len(p), nil
}

// writeChanged writes the runs of sectors of p (sector aligned at off)
// that differ from what the chain reads now.
func (s *skipUnchanged) writeChanged(p []byte, off, ss int64) error {
	cur := make([]byte, len(p))
	if _, err := s.Disk.ReadAt(cur, off); err != nil {
		return fmt.Errorf("compare before write at %d: %w", off, err)
	}
	run := int64(-1)
	flush := func(end int64) error {
		if run < 0 {
			return nil
		}
		_, err := s.Disk.WriteAt(p[run:end], off+run)
		run = -1
		return err
	}
	for i := int64(0); i < int64(len(p)); i += ss {
		if bytes.Equal(p[i:i+ss], cur[i:i+ss]) {
			if err := flush(i); err != nil {
				return err
			}
			continue
		}
		if run < 0 {
			run = i
		}
	}
	return flush(int64(len(p)))
}
