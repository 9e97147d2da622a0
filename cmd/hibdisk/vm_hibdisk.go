package main

import (
	"fmt"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// attachHibernateDisk adds the hibernate file of chain (the first disk)
// to cfg as a disk named name, served by the machine's own NBD server,
// so the guest can write its own hibernation image into the layer (a
// Linux guest: mkswap'd on the host, swapon, echo disk >
// /sys/power/state). It is writable when the chain is, and a write
// stores only the sectors it changes (diffdisk.SkipUnchanged). Such a machine
// is not offered to `vm hibernate`: both would write the same hibernate
// file. The returned view is to be closed before chain.
func attachHibernateDisk(cfg *qemu.Config, chain *diffdisk.Disk, name string) (*diffdisk.Disk, error) {
	if len(name) > qemu.MaxSerialLength {
		return nil, usagef("--hibernate-disk %q: at most %d characters (it is the virtio serial)", name, qemu.MaxSerialLength)
	}
	for _, d := range cfg.Disks {
		if d.Name == name {
			return nil, usagef("--hibernate-disk %q: a disk of that name is already attached", name)
		}
	}
	h, err := chain.Hibernate()
	if err != nil {
		return nil, fmt.Errorf("--hibernate-disk: %w", err)
	}
	// The guest rewrites its whole image each time: in a layer stacked on
	// an older image only the pages that changed are stored.
	cfg.Disks = append(cfg.Disks, qemu.Disk{Name: name, Layer: diffdisk.SkipUnchanged(h)})
	return h, nil
}
