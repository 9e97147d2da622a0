// Package checkers links in every package that registers a consistency
// check of a layer (sqlitelayer.RegisterTableCheck, diffdisk.RegisterCheck),
// so that diffdisk.Check is the whole check: the hibernate metadata
// (hibfile), the datastore (datastore) and a machine snapshot's vm_state
// (vmm/qemu). Import it for its side effect where a program or a test
// binary does not import those packages already; a test package that
// they import (or that cannot import them) links them through an
// external test file (package x_test), which shares its test binary.
package checkers

import (
	_ "github.com/hibdisk/hibdisk/datastore" // the datastore's tables and chain
	_ "github.com/hibdisk/hibdisk/hibfile"   // the hibernate metadata
	_ "github.com/hibdisk/hibdisk/vmm/qemu"  // vm_state and the RAM it was saved with
)
