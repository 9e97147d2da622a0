package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

func init() {
	register(command{name: "vm", summary: "run, hibernate and resume QEMU machines on layer chains served over NBD (vm run|hibernate|resume)", run: runVM})
}

func runVM(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("want a vm command: run, hibernate or resume (see hibdisk help vm)")
	}
	if len(args) >= 2 && args[0] == "help" {
		// vm help SUB is vm SUB -h.
		args = append(args[1:2:2], "-h")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprintln(e.stdout, "usage: hibdisk vm run [flags] DISK...")
		fmt.Fprintln(e.stdout, "       hibdisk vm hibernate [--continue [--top NEW]] [--json] LAYER")
		fmt.Fprintln(e.stdout, "       hibdisk vm resume [--top NEW] [--qmp PATH] [--json] LAYER")
		fmt.Fprintln(e.stdout, "\nRun 'hibdisk help vm SUBCOMMAND' for a subcommand's flags.")
		return nil
	}
	run, ok := vmCommands[args[0]]
	if !ok {
		return usagef("unknown vm command %q%s", args[0], suggestion(args[0], sortedKeys(vmCommands), "hibdisk help vm"))
	}
	return run(ctx, e, args[1:])
}

// vmCommands are the subcommands of `hibdisk vm`.
var vmCommands = map[string]func(ctx context.Context, e *env, args []string) error{
	"run":       runVMRun,
	"hibernate": runVMHibernate,
	"resume":    runVMResume,
}

// vmDisk is one DISK argument: [NAME=]FILE.
type vmDisk struct{ name, file string }

func parseVMDisk(arg string) (vmDisk, error) {
	name, file, named := strings.Cut(arg, "=")
	if !named {
		file = arg
		// The serial defaults to the file name without its extension.
		name = strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
	}
	if file == "" {
		return vmDisk{}, usagef("disk %q: no file", arg)
	}
	if len(name) > qemu.MaxSerialLength {
		name = name[:qemu.MaxSerialLength]
	}
	return vmDisk{name, file}, nil
}

// vmRunOptions are vm run's flags and disks.
type vmRunOptions struct {
	cfg      qemu.Config // without RAMPath and Disks
	specs    []vmDisk
	boot     bool // specs[0] is the boot disk
	readOnly bool
	asJSON   bool // one JSON line when the machine is up; the console on stderr
	// hibDisk, when set, attaches the first disk's hibernate file as
	// one more disk with this name (see attachHibernateDisk).
	hibDisk string
	stats   string // --stats FILE, as serve's
}

func runVMRun(ctx context.Context, e *env, args []string) (err error) {
	o, err := parseVMRunArgs(e, args)
	if err != nil {
		return err
	}
	// RAM in a shared file on tmpfs, so `vm hibernate` can save it.
	ramPath, err := qemu.NewRAMFile()
	if err != nil {
		return err
	}
	defer os.Remove(ramPath)
	cfg := o.cfg
	cfg.RAMPath = ramPath
	var disks []*diffdisk.Disk // closed in reverse order, after the machine
	closeDisks := func() error {
		var errs []error
		if len(disks) > 0 {
			var specs []exportSpec
			for _, s := range o.specs {
				specs = append(specs, exportSpec(s))
			}
			if serr := reportStats(e.stderr, o.stats, diskStats(specs, disks)); serr != nil {
				errs = append(errs, serr)
			}
		}
		for i := len(disks) - 1; i >= 0; i-- {
			if cerr := disks[i].Close(); cerr != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", o.specs[min(i, len(o.specs)-1)].file, cerr))
			}
		}
		disks = nil
		return errors.Join(errs...)
	}
	defer func() { err = errors.Join(err, closeDisks()) }()
	for i, s := range o.specs {
		d, err := openServed(s.file, o.readOnly, false, 0)
		if err != nil {
			return err
		}
		disks = append(disks, d)
		cfg.Disks = append(cfg.Disks, qemu.Disk{Name: s.name, Layer: d, Boot: o.boot && i == 0})
	}
	if o.hibDisk != "" {
		h, err := attachHibernateDisk(&cfg, disks[0], o.hibDisk)
		if err != nil {
			return err
		}
		disks = append(disks, h) // closed before the chain it views
	}

	m, err := qemu.Start(ctx, cfg)
	if err != nil {
		return err
	}
	// A writable first disk can hold a machine snapshot: `vm hibernate`
	// finds the machine through a state file beside it.
	top := ""
	if !o.readOnly && o.hibDisk == "" {
		top = o.specs[0].file
	}
	var ready func(*qemu.Machine)
	if o.asJSON {
		var files []string
		for _, s := range o.specs {
			files = append(files, s.file)
		}
		// Printed once `vm hibernate` can find the machine.
		ready = func(m *qemu.Machine) { printVMJSON(e.stdout, m, o.specs[0].file, top != "", "", files) }
	} else {
		fmt.Fprintf(e.stderr, "hibdisk vm: QMP socket %s\n", m.QMPPath())
	}
	return superviseVM(ctx, e, m, top, ready, closeDisks)
}

// parseVMRunArgs parses vm run's command line.
func parseVMRunArgs(e *env, args []string) (vmRunOptions, error) {
	fs := newFlags(e, "vm run", "[--kernel K [--initrd I] [--append ARGS]] [--boot DISK] [--mem SIZE] [--cpus N] [--read-only] [--qmp PATH] [--hibernate-disk NAME] [--stats FILE] [--json] DISK...")
	kernel := fs.String("kernel", "", "Linux kernel to boot directly")
	initrd := fs.String("initrd", "", "initramfs for --kernel")
	appendArgs := fs.String("append", "", `kernel command line, after "console=ttyS0 panic=-1"`)
	boot := fs.String("boot", "", "[NAME=]FILE: a BIOS-bootable disk, attached first and booted from")
	mem := fs.String("mem", "256M", "guest RAM (K/M/G suffixes)")
	cpus := fs.Int("cpus", 1, "virtual CPUs")
	accel := fs.String("accel", "tcg", "QEMU accelerator (kvm only where it is known to work)")
	readOnly := fs.Bool("read-only", false, "attach every disk read-only (layers opened read-only)")
	qmpPath := fs.String("qmp", "", "QMP socket path (default: in a private temporary directory)")
	statsFile := fs.String("stats", "", "when the machine ends, write to this file (JSON, as serve --stats) what it read of each disk and what their lazy remote bases fetched")
	hibDisk := fs.String("hibernate-disk", "", "NAME: attach the first disk's hibernate file as a virtio disk with serial NAME (the guest's swap area for its own hibernation)")
	output := outputFormat(fs)
	pos, err := parseArgs(fs, args, 0, -1)
	if err != nil {
		return vmRunOptions{}, err
	}
	asJSON, err := output()
	if err != nil {
		return vmRunOptions{}, err
	}
	console := e.stdout
	if asJSON {
		console = e.stderr // stdout holds only the JSON line
	}
	if *kernel == "" && *boot == "" {
		return vmRunOptions{}, usagef("nothing to boot: give --kernel or --boot DISK")
	}
	if *kernel == "" && (*initrd != "" || *appendArgs != "") {
		return vmRunOptions{}, usagef("--initrd and --append need --kernel")
	}
	memBytes, err := parseSize(*mem)
	if err != nil {
		return vmRunOptions{}, usageError{msg: err.Error()}
	}
	if memBytes < 16<<20 {
		return vmRunOptions{}, usagef("--mem %s: want at least 16M", *mem)
	}
	if *boot != "" {
		pos = append([]string{*boot}, pos...)
	}
	if len(pos) == 0 {
		return vmRunOptions{}, usagef("no disk: give at least one DISK (the layer the machine writes to, and hibernates into)")
	}
	o := vmRunOptions{boot: *boot != "", readOnly: *readOnly, hibDisk: *hibDisk, asJSON: asJSON, stats: *statsFile, cfg: qemu.Config{
		Accel: *accel, MemoryMiB: int(memBytes >> 20), CPUs: *cpus,
		Kernel: *kernel, Initrd: *initrd, Append: *appendArgs,
		Console: console, Stderr: e.stderr, QMPSocket: *qmpPath,
	}}
	for _, a := range pos {
		s, err := parseVMDisk(a)
		if err != nil {
			return vmRunOptions{}, err
		}
		o.specs = append(o.specs, s)
	}
	return o, nil
}
