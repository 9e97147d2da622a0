package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// A machine that `vm run` or `vm resume` runs with a writable first disk
// can hibernate: its RAM is a shared file in /dev/shm, and the process
// listens on a control socket named in a state file beside the first
// disk's top layer (TOP.vm.json). `vm hibernate TOP` finds the machine
// there and asks the running process, which owns the layers and the QMP
// connection, to hibernate it. The state file exists exactly while the
// machine can be asked.

// vmStateFileSuffix follows the top layer's name.
const vmStateFileSuffix = ".vm.json"

// vmStateFile is what `vm hibernate` reads to find a machine.
type vmStateFile struct {
	PID     int    `json:"pid"`
	Control string `json:"control"` // unix socket of the running hibdisk
	QMP     string `json:"qmp"`
}

// vmRequest is one line on the control socket.
type vmRequest struct {
	Op       string `json:"op"` // "hibernate"
	Continue bool   `json:"continue"`
	Top      string `json:"top,omitempty"` // with Continue: the new layer ("" picks one)
}

// vmReply answers a request.
type vmReply struct {
	Error     string         `json:"error,omitempty"`
	Hibernate *hibernateJSON `json:"hibernate,omitempty"`
	Resume    *resumeJSON    `json:"resume,omitempty"`
}

type hibernateJSON struct {
	Layer              string  `json:"layer"`
	SnapshotID         int64   `json:"snapshot_id"`
	RAMBytes           int64   `json:"ram_bytes"`
	RAMBlocksStored    int64   `json:"ram_blocks_stored"`
	RAMBlocksUnchanged int64   `json:"ram_blocks_unchanged"`
	RAMBytesStored     int64   `json:"ram_bytes_stored"`
	DeviceStateBytes   int     `json:"device_state_bytes"`
	StopSeconds        float64 `json:"stop_seconds"`
	SaveSeconds        float64 `json:"save_seconds"`
	TotalSeconds       float64 `json:"total_seconds"`
}

type resumeJSON struct {
	Snapshot       string  `json:"snapshot"`
	Top            string  `json:"top"`
	RAMBytes       int64   `json:"ram_bytes_written"`
	RebuildSeconds float64 `json:"rebuild_seconds"`
	TotalSeconds   float64 `json:"total_seconds"`
	QMP            string  `json:"qmp"`
}

func toHibernateJSON(r *qemu.HibernateResult) *hibernateJSON {
	return &hibernateJSON{
		Layer: r.Layer, SnapshotID: r.SnapshotID, RAMBytes: r.RAMSize,
		RAMBlocksStored: r.RAMBlocksStored, RAMBlocksUnchanged: r.RAMBlocksUnchanged, RAMBytesStored: r.RAMBytesStored(),
		DeviceStateBytes: r.DeviceStateBytes,
		StopSeconds:      r.Stop.Seconds(), SaveSeconds: r.Save.Seconds(), TotalSeconds: r.Total.Seconds(),
	}
}

// newRAMFile makes the RAM file of a hibernate-capable machine.
func newRAMFile() (string, error) {
	f, err := os.CreateTemp("/dev/shm", "hibdisk-ram-")
	if err != nil {
		return "", fmt.Errorf("guest RAM file: %w", err)
	}
	f.Close()
	return f.Name(), nil
}

// nextTop picks a new layer name beside snapshot: NAME-1.db, NAME-2.db, ...
func nextTop(snapshot string) string {
	ext := filepath.Ext(snapshot)
	stem := strings.TrimSuffix(snapshot, ext)
	if ext == "" {
		ext = ".db"
	}
	for i := 1; ; i++ {
		p := fmt.Sprintf("%s-%d%s", stem, i, ext)
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			return p
		}
	}
}

// superviseVM runs a machine until it exits: it answers `vm hibernate`
// on a control socket (when top, the first disk's top layer, is given),
// quits QEMU on ctx's end, and after a hibernate with --continue resumes
// the snapshot on a new layer and goes on with that machine. closeDisks
// closes the layers the caller opened for the first machine.
func superviseVM(ctx context.Context, e *env, m *qemu.Machine, top string, closeDisks func() error) (err error) {
	for {
		next, err := superviseOne(ctx, e, m, top, closeDisks)
		closeDisks = func() error { return nil } // resumed machines close their own
		if err != nil || next == nil {
			return err
		}
		snapshot := top
		top = next.req.Top
		if top == "" {
			top = nextTop(snapshot)
		}
		rm, res, err := qemu.Resume(ctx, qemu.ResumeOptions{Snapshot: snapshot, Top: top, Console: e.stdout, Stderr: e.stderr})
		if err != nil {
			next.reply(vmReply{Error: err.Error(), Hibernate: next.hib})
			return err
		}
		next.reply(vmReply{Hibernate: next.hib, Resume: &resumeJSON{
			Snapshot: snapshot, Top: top, RAMBytes: res.RAMBytes,
			RebuildSeconds: res.Rebuild.Seconds(), TotalSeconds: res.Total.Seconds(), QMP: rm.QMPPath(),
		}})
		fmt.Fprintf(e.stderr, "hibdisk vm: resumed %s on %s in %v; QMP socket %s\n", snapshot, top, res.Total.Round(time.Millisecond), rm.QMPPath())
		m = rm
	}
}

// pendingContinue is a hibernate --continue whose reply waits for the
// resume.
type pendingContinue struct {
	req   vmRequest
	hib   *hibernateJSON
	reply func(vmReply)
}

func superviseOne(ctx context.Context, e *env, m *qemu.Machine, top string, closeDisks func() error) (next *pendingContinue, err error) {
	type call struct {
		req   vmRequest
		reply func(vmReply)
	}
	calls := make(chan call)
	if top != "" {
		dir, err := os.MkdirTemp("", "hibdisk-vmctl-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		sock := filepath.Join(dir, "control.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			return nil, fmt.Errorf("control socket: %w", err)
		}
		defer ln.Close()
		stateFile := top + vmStateFileSuffix
		b, _ := json.Marshal(vmStateFile{PID: os.Getpid(), Control: sock, QMP: m.QMPPath()})
		if err := os.WriteFile(stateFile, b, 0o600); err != nil {
			return nil, fmt.Errorf("vm state file: %w", err)
		}
		defer os.Remove(stateFile)
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					var req vmRequest
					if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
						conn.Close()
						return
					}
					reply := func(r vmReply) {
						json.NewEncoder(conn).Encode(r)
						conn.Close()
					}
					select {
					case calls <- call{req, reply}:
					case <-m.Exited():
						reply(vmReply{Error: "the machine has exited"})
					}
				}()
			}
		}()
	}

loop:
	for {
		select {
		case <-m.Exited():
			break loop
		case <-ctx.Done():
			// Ctrl-C: ask QEMU to quit (it flushes its disks), kill it if
			// it does not within the grace period.
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err = m.Shutdown(shutdownCtx)
			cancel()
			break loop
		case c := <-calls:
			if c.req.Op != "hibernate" {
				c.reply(vmReply{Error: fmt.Sprintf("unknown request %q", c.req.Op)})
				continue
			}
			hctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			res, herr := m.Hibernate(hctx, qemu.HibernateOptions{})
			cancel()
			if herr != nil && res == nil {
				c.reply(vmReply{Error: herr.Error()})
				continue // the guest runs on
			}
			fmt.Fprintf(e.stderr, "hibdisk vm: hibernated into %s (%s of RAM stored) in %v\n", res.Layer, formatSize(res.RAMBytesStored()), res.Total.Round(time.Millisecond))
			if c.req.Continue && herr == nil {
				next = &pendingContinue{req: c.req, hib: toHibernateJSON(res), reply: c.reply}
			} else {
				r := vmReply{Hibernate: toHibernateJSON(res)}
				if herr != nil {
					r.Error = herr.Error()
				}
				c.reply(r)
			}
			err = herr
			break loop
		}
	}
	// Wait flushes every layer through the NBD server's shutdown.
	if werr := m.Wait(context.Background()); werr != nil {
		err = errors.Join(err, werr)
	}
	if cerr := closeDisks(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		if next != nil {
			next.reply(vmReply{Error: err.Error(), Hibernate: next.hib})
		}
		return nil, err
	}
	if next == nil && ctx.Err() == nil && m.ExitCode() != 0 {
		return nil, fmt.Errorf("qemu exited with status %d", m.ExitCode())
	}
	return next, nil
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
	layer := pos[0]
	b, err := os.ReadFile(layer + vmStateFileSuffix)
	if err != nil {
		return fmt.Errorf("no running machine on %s (no %s: start it with hibdisk vm run or vm resume): %w", layer, layer+vmStateFileSuffix, err)
	}
	var st vmStateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", layer+vmStateFileSuffix, err)
	}
	conn, err := net.Dial("unix", st.Control)
	if err != nil {
		return fmt.Errorf("machine on %s (pid %d): %w", layer, st.PID, err)
	}
	defer conn.Close()
	if err := json.NewEncoder(conn).Encode(vmRequest{Op: "hibernate", Continue: *cont, Top: *top}); err != nil {
		return fmt.Errorf("machine on %s: %w", layer, err)
	}
	var r vmReply
	if err := json.NewDecoder(conn).Decode(&r); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("the machine's process closed the connection without an answer")
		}
		return fmt.Errorf("machine on %s: %w", layer, err)
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
	fs := newFlags(e, "vm resume", "[--top NEW] [--qmp PATH] LAYER")
	top := fs.String("top", "", "the new diff layer the resumed machine writes to (default LAYER-N.db)")
	qmpPath := fs.String("qmp", "", "QMP socket path (default: in a private temporary directory)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *top == "" {
		*top = nextTop(pos[0])
	}
	m, res, err := qemu.Resume(ctx, qemu.ResumeOptions{Snapshot: pos[0], Top: *top, Console: e.stdout, Stderr: e.stderr, QMPSocket: *qmpPath})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "hibdisk vm: resumed %s on %s in %v; QMP socket %s\n", pos[0], *top, res.Total.Round(time.Millisecond), m.QMPPath())
	return superviseVM(ctx, e, m, *top, func() error { return nil })
}
