package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"

	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// vmJSON is what vm run --json and vm resume --json print, as one line,
// once the machine is up (the README documents it). The guest's console
// then goes to stderr, so stdout holds only this object.
type vmJSON struct {
	// Layer is the first disk's top layer (absolute); Hibernatable says
	// whether `vm hibernate LAYER` can snapshot the machine.
	Layer        string `json:"layer"`
	Hibernatable bool   `json:"hibernatable"`
	// Snapshot is the layer vm resume resumed from.
	Snapshot  string       `json:"snapshot,omitempty"`
	PID       int          `json:"pid"`      // this hibdisk process: SIGINT or SIGTERM quits the machine
	QEMUPID   int          `json:"qemu_pid"` // the QEMU process
	QMP       string       `json:"qmp"`      // QEMU's QMP socket
	NBDSocket string       `json:"nbd_socket,omitempty"`
	Disks     []vmJSONDisk `json:"disks"`
}

type vmJSONDisk struct {
	Name string `json:"name"`           // virtio serial and NBD export name
	File string `json:"file,omitempty"` // vm run: the DISK argument, absolute
	URI  string `json:"uri"`            // where it is served (read it while the machine runs)
}

// printVMJSON prints a started machine as one JSON line. files are the
// DISK arguments of vm run (nil for vm resume). It is printed once the
// machine is supervised, so a script may send `vm hibernate LAYER` as
// soon as it reads the line.
func printVMJSON(w io.Writer, m *qemu.Machine, layer string, hibernatable bool, snapshot string, files []string) error {
	out := vmJSON{
		Layer: absPath(layer), Hibernatable: hibernatable, Snapshot: absPath(snapshot),
		PID: os.Getpid(), QEMUPID: m.PID(), QMP: m.QMPPath(), NBDSocket: m.NBDSocket(), Disks: []vmJSONDisk{},
	}
	for i, d := range m.DiskExports() {
		disk := vmJSONDisk{Name: d.Name, URI: fmt.Sprintf("nbd+unix:///%s?socket=%s", url.PathEscape(d.Export), d.Socket)}
		if i < len(files) {
			disk.File = absPath(files[i])
		}
		out.Disks = append(out.Disks, disk)
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// absPath is path made absolute when it can be ("" stays "").
func absPath(path string) string {
	if path == "" {
		return ""
	}
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}
