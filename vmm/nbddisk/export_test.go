package nbddisk_test

import (
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
	"github.com/hibdisk/hibdisk/vmm/nbddisk"
)

// readOnlyLayer hides a layer's write methods.
type readOnlyLayer struct{ disklayer.Layer }

func TestExport(t *testing.T) {
	d := newStack(t)
	x := nbddisk.Export("a", d, nbddisk.ExportOptions{Description: "chain", MultiConn: true})
	if x.Name != "a" || x.Description != "chain" || x.ReadOnly || !x.MultiConn || x.PreferredBlockSize != 4096 {
		t.Errorf("writable chain: %+v", x)
	}
	if x := nbddisk.Export("a", d, nbddisk.ExportOptions{ReadOnly: true}); !x.ReadOnly || x.MultiConn {
		t.Errorf("asked read-only: %+v", x)
	}
	l, err := memlayer.New(1<<20, 512, false)
	if err != nil {
		t.Fatal(err)
	}
	if x := nbddisk.Export("b", readOnlyLayer{l}, nbddisk.ExportOptions{}); !x.ReadOnly || x.PreferredBlockSize != 512 {
		t.Errorf("layer without writes: %+v", x)
	}
	if !nbddisk.Writable(l) || nbddisk.Writable(readOnlyLayer{l}) {
		t.Errorf("Writable(memlayer) = %v, Writable(read-only view) = %v", nbddisk.Writable(l), nbddisk.Writable(readOnlyLayer{l}))
	}
}
