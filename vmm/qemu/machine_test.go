package qemu

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
)

func TestArgs(t *testing.T) {
	rw, err := memlayer.New(1<<20, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Kernel: "/k", Initrd: "/i", Append: "quiet",
		Disks: []Disk{
			{Name: "root", Layer: rw},
			{Name: "ro", Layer: rw, ReadOnly: true},
			{Name: "ext", Socket: "/s.sock", Export: "x"},
		},
	}
	got, err := cfg.Args("/q.sock", "/n.sock")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-accel", "tcg", "-machine", "pc", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		"-qmp", "unix:/q.sock,server=on,wait=off",
		"-kernel", "/k", "-initrd", "/i", "-append", "console=ttyS0 panic=-1 quiet",
		"-blockdev", "driver=nbd,node-name=disk0,server.type=unix,server.path=/n.sock,discard=unmap,export=root",
		"-device", "virtio-blk-pci,drive=disk0,serial=root",
		"-blockdev", "driver=nbd,node-name=disk1,server.type=unix,server.path=/n.sock,discard=unmap,export=ro,read-only=on",
		"-device", "virtio-blk-pci,drive=disk1,serial=ro",
		"-blockdev", "driver=nbd,node-name=disk2,server.type=unix,server.path=/s.sock,discard=unmap,export=x",
		"-device", "virtio-blk-pci,drive=disk2,serial=ext",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}

	boot := Config{Accel: "kvm", MemoryMiB: 64, Disks: []Disk{{Name: "b", Layer: rw, Boot: true}}}
	got, err = boot.Args("/q", "/n")
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(got, " ")
	for _, part := range []string{"-accel kvm", "-m 64", "virtio-blk-pci,drive=disk0,serial=b,bootindex=0"} {
		if !strings.Contains(line, part) {
			t.Errorf("boot disk args %q lack %q", line, part)
		}
	}
	if strings.Contains(line, "-kernel") {
		t.Errorf("boot disk args have a kernel: %q", line)
	}
}

func TestArgsRefuses(t *testing.T) {
	rw, err := memlayer.New(1<<20, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]Config{
		"nothing to boot":       {Disks: []Disk{{Name: "a", Layer: rw}}},
		"initrd without kernel": {Initrd: "/i", Disks: []Disk{{Name: "a", Layer: rw, Boot: true}}},
		"two boot disks":        {Disks: []Disk{{Name: "a", Layer: rw, Boot: true}, {Name: "b", Layer: rw, Boot: true}}},
		"name twice":            {Kernel: "/k", Disks: []Disk{{Name: "a", Layer: rw}, {Name: "a", Layer: rw}}},
		"empty name":            {Kernel: "/k", Disks: []Disk{{Layer: rw}}},
		"long name":             {Kernel: "/k", Disks: []Disk{{Name: strings.Repeat("x", MaxSerialLength+1), Layer: rw}}},
		"comma in name":         {Kernel: "/k", Disks: []Disk{{Name: "a,b", Layer: rw}}},
		"layer and socket":      {Kernel: "/k", Disks: []Disk{{Name: "a", Layer: rw, Socket: "/s"}}},
		"neither":               {Kernel: "/k", Disks: []Disk{{Name: "a"}}},
	} {
		if args, err := cfg.Args("/q", "/n"); err == nil {
			t.Errorf("%s: accepted: %q", name, args)
		}
	}
}

// layerOnly hides a Disk's write methods: it is only a Layer.
type layerOnly struct{ disklayer.Layer }

func TestReadOnly(t *testing.T) {
	rw, err := memlayer.New(1<<20, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		d    Disk
		want bool
	}{
		{Disk{Layer: rw}, false},
		{Disk{Layer: rw, ReadOnly: true}, true},
		{Disk{Layer: layerOnly{rw}}, true},
		{Disk{Socket: "/s"}, false},
		{Disk{Socket: "/s", ReadOnly: true}, true},
	} {
		if got := readOnly(c.d); got != c.want {
			t.Errorf("readOnly(%+v) = %v, want %v", c.d, got, c.want)
		}
	}
}
