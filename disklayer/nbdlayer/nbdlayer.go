// Package nbdlayer reads an NBD export as a read-only disklayer.Layer:
// a remote base (another hibdisk serve, qemu-nbd, nbdkit), and, through a
// private qemu-nbd, every image format QEMU reads (OpenImage), so that
// QEMU's own code interprets qcow2, vmdk, vhdx and the rest.
//
// # Invariants
//
//   - The layer never writes: its Extents report Data and Zero (never
//     Absent: it is a base), from the server's base:allocation block
//     status aligned to the layer's sectors (a sector that is partly data
//     is Data).
//   - A lost server is waited for (ClientOptions.ReconnectDelay) and its
//     requests resent; a server that comes back as another disk (other
//     size or description) fails every later read.
package nbdlayer

import (
	"context"
	"fmt"
	"iter"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
)

// Layer is a read-only layer over one NBD export.
type Layer struct {
	c      *nbd.Client
	size   int64
	sector int
	// closeFn releases what OpenImage started (qemu-nbd); nil for Dial.
	closeFn func() error
}

var _ disklayer.Layer = (*Layer)(nil)

// Dial connects to the export at uri (nbd.ParseURI's forms).
func Dial(uri string, opts nbd.ClientOptions) (*Layer, error) {
	t, err := nbd.ParseURI(uri)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, disklayer.ErrInvalid)
	}
	c, err := nbd.Dial(context.Background(), t, opts)
	if err != nil {
		return nil, err
	}
	l, err := newLayer(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return l, nil
}

func newLayer(c *nbd.Client) (*Layer, error) {
	x := c.Info()
	sector := disklayer.MinSectorSize
	for uint32(sector) < x.MinBlock && sector < disklayer.MaxSectorSize {
		sector *= 2
	}
	if x.Size%int64(sector) != 0 {
		return nil, fmt.Errorf("export %s is %d bytes, not a whole number of %d-byte sectors; a disk has no partial sector: %w", c.Target().URI(), x.Size, sector, disklayer.ErrInvalid)
	}
	return &Layer{c: c, size: x.Size, sector: sector}, nil
}

// Size implements disklayer.Layer.
func (l *Layer) Size() int64 { return l.size }

// SectorSize implements disklayer.Layer: 512 bytes, or the server's
// minimum block size when larger.
func (l *Layer) SectorSize() int { return l.sector }

// Info is what the server said about the export.
func (l *Layer) Info() nbd.ExportInfo { return l.c.Info() }

// URI names the export.
func (l *Layer) URI() string { return l.c.Target().URI() }

// Fetched is the number of data bytes received from the server so far
// (holes the server answers without data are not counted).
func (l *Layer) Fetched() int64 { return l.c.Fetched.Load() }

// Reconnects is the number of times the server was reconnected to.
func (l *Layer) Reconnects() int64 { return l.c.Reconnects.Load() }

// ReadAt implements disklayer.Layer.
func (l *Layer) ReadAt(p []byte, off int64) (int, error) {
	if err := disklayer.CheckRange(off, int64(len(p)), l.size); err != nil {
		return 0, err
	}
	return l.c.ReadAt(p, off)
}

// Extents implements disklayer.Layer from base:allocation: runs that
// read as zeros are Zero, everything else Data.
func (l *Layer) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	return func(yield func(disklayer.Extent, error) bool) {
		if err := disklayer.CheckRange(off, length, l.size); err != nil {
			yield(disklayer.Extent{}, err)
			return
		}
		a := aligner{unit: int64(l.sector), yield: yield}
		for pos, end := off, off+length; pos < end; {
			var err error
			more := true
			err = l.c.BlockStatus(pos, end-pos, func(o, n int64, state uint32) {
				kind := disklayer.Data
				if state&nbd.StateZero != 0 {
					kind = disklayer.Zero
				}
				more = more && a.add(o, n, kind)
				pos = o + n
			})
			if err != nil {
				yield(disklayer.Extent{}, err)
				return
			}
			if !more {
				return
			}
		}
		a.flush()
	}
}

// Close disconnects (and stops qemu-nbd for OpenImage).
func (l *Layer) Close() error {
	err := l.c.Close()
	if l.closeFn != nil {
		if cerr := l.closeFn(); err == nil {
			err = cerr
		}
	}
	return err
}

// aligner turns byte-granular runs into the sector-aligned extents the
// Layer contract promises: a sector holding both data and zeros is Data.
type aligner struct {
	unit    int64
	pend    disklayer.Extent
	has     bool
	stopped bool
	yield   func(disklayer.Extent, error) bool
}

// add takes the next run; it reports false once the consumer stopped.
func (a *aligner) add(off, n int64, kind disklayer.ExtentKind) bool {
	if a.stopped || n <= 0 {
		return !a.stopped
	}
	end := off + n
	switch {
	case !a.has:
		a.pend, a.has = disklayer.Extent{Off: off, Len: n, Kind: kind}, true
		return true
	case kind == a.pend.Kind:
		a.pend.Len = end - a.pend.Off
		return true
	case off%a.unit == 0:
		return a.emit(disklayer.Extent{Off: off, Len: n, Kind: kind})
	}
	// The boundary falls inside a sector: the sector goes to Data.
	lo := off - off%a.unit
	hi := lo + a.unit
	if a.pend.Kind == disklayer.Data {
		if end <= hi {
			a.pend.Len = end - a.pend.Off
			return true
		}
		a.pend.Len = hi - a.pend.Off
		return a.emit(disklayer.Extent{Off: hi, Len: end - hi, Kind: kind})
	}
	if lo <= a.pend.Off {
		a.pend = disklayer.Extent{Off: a.pend.Off, Len: end - a.pend.Off, Kind: disklayer.Data}
		return true
	}
	a.pend.Len = lo - a.pend.Off
	return a.emit(disklayer.Extent{Off: lo, Len: end - lo, Kind: kind})
}

// emit yields the pending extent and makes next pending.
func (a *aligner) emit(next disklayer.Extent) bool {
	if !a.yield(a.pend, nil) {
		a.stopped = true
		return false
	}
	a.pend = next
	return true
}

// flush yields the last extent.
func (a *aligner) flush() {
	if a.has && !a.stopped {
		a.yield(a.pend, nil)
	}
}
