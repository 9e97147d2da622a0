package diffdisk

import (
	"fmt"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Hibernate returns the chain's hibernate file: the hibernate_blocks
// tables of its hibdisk layers stacked the same way as their disks (a
// snapshot layer over an older one stores only the blocks that changed).
// The stack ends at the first layer that is not a hibdisk layer (a raw
// base has no hibernate file). It shares d's layers: close it before d,
// and closing it leaves d open. It is writable when d is.
func (d *Disk) Hibernate() (*Disk, error) {
	var views []disklayer.Layer
	for _, l := range d.layers {
		f, ok := l.(*sqlitelayer.File)
		if !ok {
			break
		}
		views = append(views, f.Hibernate())
	}
	if len(views) == 0 {
		return nil, fmt.Errorf("hibernate file: the top layer is a raw image: %w", disklayer.ErrNotLayer)
	}
	h, err := Compose(Options{ReadOnly: d.ReadOnly()}, views...)
	if err != nil {
		return nil, fmt.Errorf("hibernate file: %w", err)
	}
	return h, nil
}
