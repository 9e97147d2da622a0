package nbddisk

import (
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/vmm/nbd"
)

// ExportOptions are what legitimately differs between the exports of
// layers: hibdisk serve and vmm/qemu serve layers the same way except
// for these.
type ExportOptions struct {
	// Description is shown by `nbdinfo --list`; optional.
	Description string
	// ReadOnly exports the layer read-only even when it could be written.
	ReadOnly bool
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN. Set it only when a
	// Flush of the layer makes the writes of every connection durable
	// and every connection sees every completed write. That holds for a
	// diffdisk chain, whose one SQLite connection serves every NBD
	// connection, so hibdisk serve sets it. vmm/qemu leaves it off: QEMU
	// opens one connection per disk, and a machine's Disk.Layer may be
	// any layer implementation.
	MultiConn bool
}

// Export describes l as the NBD export name, served by New(l).
//
// The export is read-only when opts.ReadOnly is set or Writable(l) is
// false, so a read-only chain or a layer marked read-only is never
// offered writable with every write failing. Its preferred block size is
// l's sector size (aligned I/O avoids read-modify-write), never below
// 512, the smallest block size NBD allows; the disklayer contract keeps
// sector sizes at 512 or more, so this only guards a layer that breaks it.
func Export(name string, l disklayer.Layer, opts ExportOptions) nbd.Export {
	return nbd.Export{
		Name:               name,
		Description:        opts.Description,
		Backend:            New(l),
		ReadOnly:           opts.ReadOnly || !Writable(l),
		PreferredBlockSize: uint32(max(l.SectorSize(), disklayer.MinSectorSize)),
		MultiConn:          opts.MultiConn,
	}
}

// Writable reports whether l can take writes: it is a disklayer.Disk and
// does not report itself read-only (a ReadOnly method returning true, as
// a read-only diffdisk chain or raw image does).
func Writable(l disklayer.Layer) bool {
	if _, ok := l.(disklayer.Disk); !ok {
		return false
	}
	if ro, ok := l.(interface{ ReadOnly() bool }); ok && ro.ReadOnly() {
		return false
	}
	return true
}
