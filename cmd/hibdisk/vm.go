package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

func init() {
	register(command{name: "vm", summary: "run a QEMU machine on layer chains served over NBD (vm run)", run: runVM})
}

func runVM(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("want a vm command: run (see hibdisk vm run -h)")
	}
	switch args[0] {
	case "-h", "--help":
		fmt.Fprintln(e.stderr, "usage: hibdisk vm run [flags] DISK...   (hibdisk vm run -h for the flags)")
		return nil
	case "run":
		return runVMRun(ctx, e, args[1:])
	default:
		return usagef("unknown vm command %q (want run)", args[0])
	}
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

func runVMRun(ctx context.Context, e *env, args []string) (err error) {
	fs := newFlags(e, "vm run", "[--kernel K [--initrd I] [--append ARGS]] [--boot DISK] [--mem SIZE] [--cpus N] [--read-only] [--qmp PATH] DISK...")
	kernel := fs.String("kernel", "", "Linux kernel to boot directly")
	initrd := fs.String("initrd", "", "initramfs for --kernel")
	appendArgs := fs.String("append", "", `kernel command line, after "console=ttyS0 panic=-1"`)
	boot := fs.String("boot", "", "[NAME=]FILE: a BIOS-bootable disk, attached first and booted from")
	mem := fs.String("mem", "256M", "guest RAM (K/M/G suffixes)")
	cpus := fs.Int("cpus", 1, "virtual CPUs")
	accel := fs.String("accel", "tcg", "QEMU accelerator (kvm only where it is known to work)")
	readOnly := fs.Bool("read-only", false, "attach every disk read-only (layers opened read-only)")
	qmpPath := fs.String("qmp", "", "QMP socket path (default: in a private temporary directory)")
	pos, err := parseArgs(fs, args, 0, -1)
	if err != nil {
		return err
	}
	if *kernel == "" && *boot == "" {
		return usagef("nothing to boot: give --kernel or --boot DISK")
	}
	if *kernel == "" && (*initrd != "" || *appendArgs != "") {
		return usagef("--initrd and --append need --kernel")
	}
	memBytes, err := parseSize(*mem)
	if err != nil {
		return usageError{err.Error()}
	}
	if memBytes < 16<<20 {
		return usagef("--mem %s: want at least 16M", *mem)
	}
	var specs []vmDisk
	if *boot != "" {
		pos = append([]string{*boot}, pos...)
	}
	for _, a := range pos {
		s, err := parseVMDisk(a)
		if err != nil {
			return err
		}
		specs = append(specs, s)
	}

	cfg := qemu.Config{
		Accel: *accel, MemoryMiB: int(memBytes >> 20), CPUs: *cpus,
		Kernel: *kernel, Initrd: *initrd, Append: *appendArgs,
		Console: e.stdout, Stderr: e.stderr, QMPSocket: *qmpPath,
	}
	var disks []*diffdisk.Disk // closed in reverse order, after the machine
	defer func() {
		for i := len(disks) - 1; i >= 0; i-- {
			if cerr := disks[i].Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("close %s: %w", specs[i].file, cerr))
			}
		}
	}()
	for i, s := range specs {
		d, err := openServed(s.file, *readOnly, false)
		if err != nil {
			return err
		}
		disks = append(disks, d)
		cfg.Disks = append(cfg.Disks, qemu.Disk{Name: s.name, Layer: d, Boot: *boot != "" && i == 0})
	}

	m, err := qemu.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "hibdisk vm: QMP socket %s\n", m.QMPPath())
	select {
	case <-m.Exited():
	case <-ctx.Done():
		// Ctrl-C: ask QEMU to quit (it flushes its disks), kill it if
		// it does not within the grace period.
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Shutdown(shutdownCtx); err != nil {
			return err
		}
	}
	// Wait flushes every layer through the NBD server's shutdown.
	if err := m.Wait(context.Background()); err != nil {
		return err
	}
	if ctx.Err() == nil && m.ExitCode() != 0 {
		return fmt.Errorf("qemu exited with status %d", m.ExitCode())
	}
	return nil
}
