// Package nbddisk serves disklayer disks (layer chains) through the NBD
// server in vmm/nbd, which knows nothing of layers: it adapts a
// disklayer.Disk to nbd.Backend and maps layer errors to NBD error codes.
package nbddisk

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
)

// Backend serves a disklayer.Disk (or a read-only disklayer.Layer) as an
// nbd.Backend. It is safe for concurrent use when the disk is.
type Backend struct {
	layer disklayer.Layer
	disk  disklayer.Disk // nil when read-only
	// zeroUnit is the granularity at which READ reports zero runs.
	zeroUnit int
}

// New adapts l. Writes, Zero and Flush need l to be a disklayer.Disk;
// otherwise they fail with EPERM (serve such a layer as a read-only
// export).
func New(l disklayer.Layer) *Backend {
	b := &Backend{layer: l, zeroUnit: max(l.SectorSize(), 4096)}
	b.disk, _ = l.(disklayer.Disk)
	return b
}

var (
	_ nbd.Backend      = (*Backend)(nil)
	_ nbd.SparseReader = (*Backend)(nil)
)

// Size is the disk size in bytes.
func (b *Backend) Size() int64 { return b.layer.Size() }

// ReadAt reads through the layer chain.
func (b *Backend) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.layer.ReadAt(p, off)
	return n, errno(err)
}

// ReadSparse reads p and reports the aligned runs that read as zeros, so
// a structured READ sends them as OFFSET_HOLE chunks (which the protocol
// defines as "reads as zeros", allocated or not) instead of bytes.
func (b *Backend) ReadSparse(p []byte, off int64, zero func(off, length int64)) error {
	if _, err := b.layer.ReadAt(p, off); err != nil {
		return errno(err)
	}
	unit := b.zeroUnit
	if len(p) < 2*unit {
		// Small reads go out as one data chunk: splitting them costs
		// the client more than the zeros do.
		return nil
	}
	// Zero runs are whole units aligned to the disk, so the data
	// chunks between them keep the client's alignment.
	first := int((int64(unit) - off%int64(unit)) % int64(unit))
	runStart := -1
	for i := first; i+unit <= len(p); i += unit {
		if isZero(p[i : i+unit]) {
			if runStart < 0 {
				runStart = i
			}
			continue
		}
		if runStart >= 0 {
			zero(off+int64(runStart), int64(i-runStart))
			runStart = -1
		}
	}
	if runStart >= 0 {
		end := first + (len(p)-first)/unit*unit
		zero(off+int64(runStart), int64(end-runStart))
	}
	return nil
}

var zeroPage [64 << 10]byte

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroPage))
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// WriteAt writes to the top layer.
func (b *Backend) WriteAt(p []byte, off int64) (int, error) {
	if b.disk == nil {
		return 0, fmt.Errorf("write at %d: %w", off, nbd.EPERM)
	}
	n, err := b.disk.WriteAt(p, off)
	return n, errno(err)
}

// Zero serves WRITE_ZEROES and TRIM: tombstones in the top layer, which
// hide lower data and cost no data writes.
func (b *Backend) Zero(off, length int64) error {
	if b.disk == nil {
		return fmt.Errorf("zero at %d: %w", off, nbd.EPERM)
	}
	return errno(b.disk.Zero(off, length))
}

// Flush commits the top layer durably.
func (b *Backend) Flush() error {
	if b.disk == nil {
		return nil
	}
	return errno(b.disk.Flush())
}

// BlockStatus reports the chain's allocation: Data runs as allocated,
// Zero (tombstones) and Absent runs as holes that read as zeros.
func (b *Backend) BlockStatus(off, length int64, fn func(off, length int64, state uint32) bool) error {
	for e, err := range b.layer.Extents(off, length) {
		if err != nil {
			return errno(err)
		}
		state := uint32(0)
		if e.Kind != disklayer.Data {
			state = nbd.StateHole | nbd.StateZero
		}
		if !fn(e.Off, e.Len, state) {
			return nil
		}
	}
	return nil
}

// errno tags layer errors with the NBD error code a client should see;
// anything unclassified becomes EIO in the server.
func errno(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, disklayer.ErrReadOnly):
		return fmt.Errorf("%w: %w", nbd.EPERM, err)
	case errors.Is(err, disklayer.ErrOutOfRange), errors.Is(err, disklayer.ErrInvalid):
		return fmt.Errorf("%w: %w", nbd.EINVAL, err)
	case errors.Is(err, disklayer.ErrClosed):
		return fmt.Errorf("%w: %w", nbd.ESHUTDOWN, err)
	}
	return err
}
