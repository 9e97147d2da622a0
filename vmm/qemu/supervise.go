package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// A machine that `vm run` or `vm resume` runs with a writable first disk
// can hibernate: its RAM is a shared file in /dev/shm, and the process
// listens on a control socket named in a state file beside the first
// disk's top layer (TOP.vm.json). `vm hibernate TOP` finds the machine
// there and asks the running process, which owns the layers and the QMP
// connection, to hibernate it. The state file exists exactly while the
// machine can be asked.
//
// Supervise is the running process's side, RequestHibernate the asking
// one; the protocol between them is one JSON request line and one JSON
// reply (ControlReply) on the control socket.

// StateFileSuffix follows the top layer's name: the state file of a
// supervised machine whose first disk's top layer is TOP is
// TOP+StateFileSuffix.
const StateFileSuffix = ".vm.json"

// stateFile is what RequestHibernate reads to find a machine.
type stateFile struct {
	PID     int    `json:"pid"`
	Control string `json:"control"` // unix socket of the supervising process
	QMP     string `json:"qmp"`
}

// controlRequest is one line on the control socket.
type controlRequest struct {
	Op       string `json:"op"` // "hibernate"
	Continue bool   `json:"continue"`
	Top      string `json:"top,omitempty"` // with Continue: the new layer ("" picks one)
}

// ControlReply answers a request on the control socket: what a hibernate
// saved, with --continue the resume, and the error if any (the text of
// the supervisor's error; a hibernate that saved its snapshot and then
// failed reports both).
type ControlReply struct {
	Error     string           `json:"error,omitempty"`
	Hibernate *HibernateReport `json:"hibernate,omitempty"`
	Resume    *ResumeReport    `json:"resume,omitempty"`
}

// HibernateReport is a HibernateResult as the control socket carries it
// (sizes in bytes, durations in seconds).
type HibernateReport struct {
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
	// The parts of save_seconds (HibernateResult): disk flush, rows and
	// RAM written into the transaction, wait for the RAM digest, commit.
	FlushSeconds  float64 `json:"flush_seconds"`
	WriteSeconds  float64 `json:"write_seconds"`
	DigestSeconds float64 `json:"digest_seconds"`
	CommitSeconds float64 `json:"commit_seconds"`
}

// ResumeReport is the resume after a hibernate with Continue.
type ResumeReport struct {
	Snapshot       string  `json:"snapshot"`
	Top            string  `json:"top"`
	RAMBytes       int64   `json:"ram_bytes_written"`
	RebuildSeconds float64 `json:"rebuild_seconds"`
	StartSeconds   float64 `json:"start_seconds"`   // QEMU's start up to QMP
	MigrateSeconds float64 `json:"migrate_seconds"` // device state in, up to cont
	TotalSeconds   float64 `json:"total_seconds"`
	QMP            string  `json:"qmp"`
}

func newHibernateReport(r *HibernateResult) *HibernateReport {
	return &HibernateReport{
		Layer: r.Layer, SnapshotID: r.SnapshotID, RAMBytes: r.RAMSize,
		RAMBlocksStored: r.RAMBlocksStored, RAMBlocksUnchanged: r.RAMBlocksUnchanged, RAMBytesStored: r.RAMBytesStored(),
		DeviceStateBytes: r.DeviceStateBytes,
		StopSeconds:      r.Stop.Seconds(), SaveSeconds: r.Save.Seconds(), TotalSeconds: r.Total.Seconds(),
		FlushSeconds: r.Flush.Seconds(), WriteSeconds: r.Write.Seconds(), DigestSeconds: r.Digest.Seconds(), CommitSeconds: r.Commit.Seconds(),
	}
}

// NewRAMFile makes an empty RAM file for a hibernate-capable machine
// (Config.RAMPath) in /dev/shm and returns its path. The caller removes
// it if the machine does not start (a started Machine's Wait does).
func NewRAMFile() (string, error) {
	f, err := os.CreateTemp("/dev/shm", "hibdisk-ram-")
	if err != nil {
		return "", fmt.Errorf("guest RAM file: %w", err)
	}
	f.Close()
	return f.Name(), nil
}

// NextTop picks a new layer name beside snapshot that does not exist
// yet: NAME-1.db, NAME-2.db, ... (snapshot's extension, .db without one).
func NextTop(snapshot string) string {
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

// SuperviseOptions configure Supervise.
type SuperviseOptions struct {
	// Top is the first disk's top layer, where the state file goes; ""
	// means the machine cannot be asked to hibernate (no control socket).
	Top string
	// CloseDisks closes the layers the caller opened for the first
	// machine; Supervise calls it once that machine has exited and its
	// NBD server has flushed them. Resumed machines close their own.
	// nil means there are none.
	CloseDisks func() error
	// Console and Stderr are given to machines resumed after a hibernate
	// with Continue (ResumeOptions).
	Console, Stderr io.Writer
	// OnHibernate, when set, is told of every hibernate that saved a
	// snapshot, before the requester gets the reply.
	OnHibernate func(*HibernateResult)
	// OnResume, when set, is told of every resume after a hibernate with
	// Continue: snapshot resumed on top as machine m.
	OnResume func(snapshot, top string, m *Machine, res *ResumeResult)
	// OnReady, when set, is told when machine m (the first, then each
	// resumed one) is supervised: from then on RequestHibernate on its
	// top layer finds it (when there is one).
	OnReady func(m *Machine)
}

// Supervise runs machine m until it exits: it answers RequestHibernate
// on a control socket (when opts.Top is set), quits QEMU when ctx ends
// (Shutdown, with a 30 s grace period before a kill), and after a
// hibernate with Continue resumes the snapshot on a new layer and goes on
// supervising that machine.
//
// It returns nil when the machine powered off with QEMU's exit status 0,
// was hibernated, or was shut down because ctx ended; otherwise the first
// error of the hibernate, the flush of the layers (Wait), CloseDisks, or
// QEMU's non-zero exit. The state file and control socket exist exactly
// while a machine can be asked; every request gets one reply.
func Supervise(ctx context.Context, m *Machine, opts SuperviseOptions) error {
	top, closeDisks := opts.Top, opts.CloseDisks
	if closeDisks == nil {
		closeDisks = func() error { return nil }
	}
	for {
		next, err := superviseOne(ctx, m, top, closeDisks, opts.OnHibernate, opts.OnReady)
		closeDisks = func() error { return nil } // resumed machines close their own
		if err != nil || next == nil {
			return err
		}
		snapshot := top
		top = next.req.Top
		if top == "" {
			top = NextTop(snapshot)
		}
		rm, res, err := Resume(ctx, ResumeOptions{Snapshot: snapshot, Top: top, Console: opts.Console, Stderr: opts.Stderr})
		if err != nil {
			next.reply(ControlReply{Error: err.Error(), Hibernate: next.hib})
			return err
		}
		next.reply(ControlReply{Hibernate: next.hib, Resume: &ResumeReport{
			Snapshot: snapshot, Top: top, RAMBytes: res.RAMBytes,
			RebuildSeconds: res.Rebuild.Seconds(), StartSeconds: res.Start.Seconds(), MigrateSeconds: res.Migrate.Seconds(),
			TotalSeconds: res.Total.Seconds(), QMP: rm.QMPPath(),
		}})
		if opts.OnResume != nil {
			opts.OnResume(snapshot, top, rm, res)
		}
		m = rm
	}
}

// pendingContinue is a hibernate with Continue whose reply waits for the
// resume.
type pendingContinue struct {
	req   controlRequest
	hib   *HibernateReport
	reply func(ControlReply)
}

// controlCall is a request read from the control socket and the way to
// answer it.
type controlCall struct {
	req   controlRequest
	reply func(ControlReply)
}

// superviseOne supervises one machine until it exits (see Supervise);
// next is a hibernate with Continue, to be resumed and answered.
func superviseOne(ctx context.Context, m *Machine, top string, closeDisks func() error, onHibernate func(*HibernateResult), onReady func(*Machine)) (next *pendingContinue, err error) {
	calls := make(chan controlCall)
	if top != "" {
		stop, err := listenControl(m, top, calls)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	if onReady != nil {
		onReady(m)
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
			var done bool
			next, done, err = answer(ctx, m, c, onHibernate)
			if done {
				break loop
			}
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
			next.reply(ControlReply{Error: err.Error(), Hibernate: next.hib})
		}
		return nil, err
	}
	if next == nil && ctx.Err() == nil && m.ExitCode() != 0 {
		return nil, fmt.Errorf("qemu exited with status %d", m.ExitCode())
	}
	return next, nil
}

// answer carries out one control request. done says the machine has
// quit (a hibernate that saved a snapshot); a request that fails before
// that is answered and the guest runs on. A hibernate with Continue that
// succeeded comes back as next, unanswered.
func answer(ctx context.Context, m *Machine, c controlCall, onHibernate func(*HibernateResult)) (next *pendingContinue, done bool, err error) {
	if c.req.Op != "hibernate" {
		c.reply(ControlReply{Error: fmt.Sprintf("unknown request %q", c.req.Op)})
		return nil, false, nil
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	res, herr := m.Hibernate(hctx, HibernateOptions{})
	cancel()
	if herr != nil && res == nil {
		c.reply(ControlReply{Error: herr.Error()})
		return nil, false, nil // the guest runs on
	}
	if onHibernate != nil {
		onHibernate(res)
	}
	if c.req.Continue && herr == nil {
		return &pendingContinue{req: c.req, hib: newHibernateReport(res), reply: c.reply}, true, nil
	}
	r := ControlReply{Hibernate: newHibernateReport(res)}
	if herr != nil {
		r.Error = herr.Error()
	}
	c.reply(r)
	return nil, true, herr
}

// listenControl makes the control socket of m in a private directory,
// writes the state file top+StateFileSuffix naming it, and sends every
// request that arrives to calls (answering it itself once the machine
// has exited). stop removes the state file and the socket.
func listenControl(m *Machine, top string, calls chan<- controlCall) (stop func(), err error) {
	dir, err := os.MkdirTemp("", "hibdisk-vmctl-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "control.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("control socket: %w", err)
	}
	statePath := top + StateFileSuffix
	b, _ := json.Marshal(stateFile{PID: os.Getpid(), Control: sock, QMP: m.QMPPath()})
	if err := os.WriteFile(statePath, b, 0o600); err != nil {
		ln.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("vm state file: %w", err)
	}
	go acceptControl(m, ln, calls)
	return func() {
		os.Remove(statePath)
		ln.Close()
		os.RemoveAll(dir)
	}, nil
}

// acceptControl reads one request from each connection to ln until ln
// is closed.
func acceptControl(m *Machine, ln net.Listener, calls chan<- controlCall) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			var req controlRequest
			if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
				conn.Close()
				return
			}
			reply := func(r ControlReply) {
				json.NewEncoder(conn).Encode(r)
				conn.Close()
			}
			select {
			case calls <- controlCall{req, reply}:
			case <-m.Exited():
				reply(ControlReply{Error: "the machine has exited"})
			}
		}()
	}
}

// HibernateRequest is what RequestHibernate asks of a machine.
type HibernateRequest struct {
	// Continue resumes the machine at once on a new diff layer over the
	// snapshot, in the supervising process.
	Continue bool
	// Top, with Continue, is the new layer; "" lets the supervisor pick
	// one with NextTop.
	Top string
}

// RequestHibernate asks the process supervising the machine whose first
// disk's top layer is layer (found through the state file) to hibernate
// it, and returns its reply. The error is about reaching the machine or
// reading the reply; a reply may carry an error of its own
// (ControlReply.Error) besides what was done.
func RequestHibernate(layer string, req HibernateRequest) (*ControlReply, error) {
	b, err := os.ReadFile(layer + StateFileSuffix)
	if err != nil {
		return nil, fmt.Errorf("no running machine on %s (no %s: start it with hibdisk vm run or vm resume): %w", layer, layer+StateFileSuffix, err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", layer+StateFileSuffix, err)
	}
	conn, err := net.Dial("unix", st.Control)
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist) {
		return nil, gone(layer, st)
	}
	if err != nil {
		return nil, fmt.Errorf("machine on %s (pid %d): %w", layer, st.PID, err)
	}
	defer conn.Close()
	if err := json.NewEncoder(conn).Encode(controlRequest{Op: "hibernate", Continue: req.Continue, Top: req.Top}); err != nil {
		return nil, fmt.Errorf("machine on %s: %w", layer, err)
	}
	var r ControlReply
	if err := json.NewDecoder(conn).Decode(&r); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("the machine's process closed the connection without an answer")
		}
		return nil, fmt.Errorf("machine on %s: %w", layer, err)
	}
	return &r, nil
}

// gone removes what a machine that ended without cleaning up (its
// process was killed) left behind, found through its state file: the
// state file and the private directories of its sockets. A supervisor
// removes its state file before it closes its control socket, so a state
// file whose socket refuses connections belongs to a dead machine.
func gone(layer string, st stateFile) error {
	os.Remove(layer + StateFileSuffix)
	for _, p := range []string{st.Control, st.QMP} {
		if dir := filepath.Dir(p); strings.HasPrefix(filepath.Base(dir), "hibdisk-vm") {
			os.RemoveAll(dir)
		}
	}
	return fmt.Errorf("the machine on %s is gone: its hibdisk process (pid %d) ended without cleaning up (killed?); removed its stale %s. %s holds what the guest wrote up to its last flush: start it again with hibdisk vm run: %w",
		layer, st.PID, layer+StateFileSuffix, layer, ErrMachineGone)
}
