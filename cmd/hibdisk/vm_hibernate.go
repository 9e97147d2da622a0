package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// A machine that `vm run` or `vm resume` runs with a writable first disk
// can hibernate: qemu.Supervise answers `vm hibernate TOP`
// (qemu.RequestHibernate) through a state file beside the first disk's
// top layer (TOP.vm.json).

// superviseVM runs a machine until it exits (qemu.Supervise): it answers
// `vm hibernate` when top, the first disk's top layer, is given, quits
// QEMU on ctx's end, and goes on with the resumed machine after a
// hibernate with --continue. ready, when not nil, is called once the
// first machine can be asked to hibernate; with it (--json) the console
// of resumed machines goes to stderr, as the first one's does.
// closeDisks closes the layers the caller opened for the first machine.
func superviseVM(ctx context.Context, e *env, m *qemu.Machine, top string, ready func(*qemu.Machine), closeDisks func() error) error {
	console := e.stdout
	var onReady func(*qemu.Machine)
	if ready != nil {
		console = e.stderr
		var once sync.Once
		onReady = func(m *qemu.Machine) { once.Do(func() { ready(m) }) }
	}
	return qemu.Supervise(ctx, m, qemu.SuperviseOptions{
		Top: top, CloseDisks: closeDisks, Console: console, Stderr: e.stderr, OnReady: onReady,
		OnHibernate: func(res *qemu.HibernateResult) {
			fmt.Fprintf(e.stderr, "hibdisk vm: hibernated into %s (%s of RAM stored) in %s\n", res.Layer, formatSize(res.RAMBytesStored()), seconds(res.Total))
		},
		OnResume: func(snapshot, top string, m *qemu.Machine, res *qemu.ResumeResult) {
			fmt.Fprintf(e.stderr, "hibdisk vm: resumed %s on %s in %s; QMP socket %s\n", snapshot, top, seconds(res.Total), m.QMPPath())
		},
	})
}

func runVMHibernate(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "vm hibernate", "[--continue [--top NEW]] [--json] LAYER")
	cont := fs.Bool("continue", false, "resume the machine at once on a new diff layer over the snapshot")
	top := fs.String("top", "", "with --continue: the new layer (default LAYER-N.db)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *top != "" && !*cont {
		return usagef("--top needs --continue")
	}
	r, err := qemu.RequestHibernate(pos[0], qemu.HibernateRequest{Continue: *cont, Top: *top})
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else if h := r.Hibernate; h != nil {
		fmt.Fprintf(e.stdout, "hibernated into %s: snapshot %d, %s of %s RAM stored (%d blocks; %d unchanged), device state %d bytes, in %.3fs (stop %.3fs, save %.3fs)\n",
			h.Layer, h.SnapshotID, formatSize(h.RAMBytesStored), formatSize(h.RAMBytes), h.RAMBlocksStored, h.RAMBlocksUnchanged, h.DeviceStateBytes, h.TotalSeconds, h.StopSeconds, h.SaveSeconds)
		if rs := r.Resume; rs != nil {
			fmt.Fprintf(e.stdout, "resumed on %s in %.3fs (RAM rebuilt in %.3fs); QMP socket %s\n", rs.Top, rs.TotalSeconds, rs.RebuildSeconds, rs.QMP)
		}
	}
	if r.Error != "" {
		return errors.New(r.Error)
	}
	return nil
}

func runVMResume(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "vm resume", "[--top NEW] [--qmp PATH] [--json] LAYER")
	top := fs.String("top", "", "the new diff layer the resumed machine writes to (default LAYER-N.db)")
	qmpPath := fs.String("qmp", "", "QMP socket path (default: in a private temporary directory)")
	output := outputFormat(fs)
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	asJSON, err := output()
	if err != nil {
		return err
	}
	console := e.stdout
	if asJSON {
		console = e.stderr // stdout holds only the JSON line
	}
	if *top == "" {
		*top = qemu.NextTop(pos[0])
	}
	m, res, err := qemu.Resume(ctx, qemu.ResumeOptions{Snapshot: pos[0], Top: *top, Console: console, Stderr: e.stderr, QMPSocket: *qmpPath})
	if err != nil {
		return err
	}
	var ready func(*qemu.Machine)
	if asJSON {
		// Printed once `vm hibernate` can find the machine.
		ready = func(m *qemu.Machine) { printVMJSON(e.stdout, m, *top, true, pos[0], nil) }
	} else {
		fmt.Fprintf(e.stderr, "hibdisk vm: resumed %s on %s in %s; QMP socket %s\n", pos[0], *top, seconds(res.Total), m.QMPPath())
	}
	return superviseVM(ctx, e, m, *top, ready, func() error { return nil })
}

// seconds is how the CLI prints a duration: seconds with three decimals
// ("0.850s", "12.034s"), as the JSON's *_seconds fields hold them.
func seconds(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }
