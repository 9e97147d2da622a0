package main

import (
	"flag"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
)

// qemuFormats are the -O formats qemu-img writes (diffdisk.QemuImgFormat).
const qemuFormats = "qcow2|vmdk|vhdx|vdi|vpc"

// qemuFlags are qemu-img's format options (-o, repeatable: the lists are
// joined, as qemu-img joins them) and compression (-c), passed to it.
type qemuFlags struct {
	options    string
	compressed bool
}

func (q *qemuFlags) register(fs *flag.FlagSet) {
	fs.Func("o", "qemu-img's format options, e.g. compat=0.10, subformat=streamOptimized (qcow2|vmdk|vhdx|vdi|vpc only)", func(s string) error {
		q.options = strings.TrimPrefix(q.options+","+s, ",")
		return nil
	})
	fs.BoolVar(&q.compressed, "c", false, "compressed output, as qemu-img -c (qcow2, vmdk streamOptimized)")
}

// check refuses -o and -c for the outputs hibdisk writes itself.
func (q *qemuFlags) check(format string) error {
	if (q.options != "" || q.compressed) && !diffdisk.QemuImgFormat(format) {
		return usagef("-o and -c are qemu-img's options, for -O %s; not for -O %s", qemuFormats, format)
	}
	return nil
}
