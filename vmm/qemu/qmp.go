package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// QMP is a client of the QEMU Machine Protocol on a unix socket. Commands
// may be issued from several goroutines; responses are matched by id.
// Asynchronous events are kept in arrival order for WaitEvent and Events.
type QMP struct {
	conn net.Conn

	writeMu sync.Mutex // one command on the wire at a time

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan qmpResponse
	events  []Event
	taken   []bool        // taken[i]: events[i] was handed out by WaitEvent
	changed chan struct{} // closed and replaced when events or closed change
	readErr error         // why the reader stopped; set once
	closed  bool
}

// Event is an asynchronous QMP event ("SHUTDOWN", "STOP", "RESUME", ...).
type Event struct {
	Name      string
	Data      json.RawMessage
	Timestamp time.Time
}

// QMPError is an error response to a command.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

type qmpResponse struct {
	ret json.RawMessage
	err *QMPError
}

// wireMessage is any message QEMU sends.
type wireMessage struct {
	QMP       json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *struct{ Class, Desc string }
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	ID        *uint64         `json:"id"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// DialQMP connects to a QMP server socket, reads the greeting and leaves
// capability negotiation mode (qmp_capabilities), retrying the dial until
// ctx ends, since QEMU creates the socket only during its startup.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var conn net.Conn
	var d net.Dialer
	for {
		var err error
		conn, err = d.DialContext(ctx, "unix", path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: dial %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	q := &QMP{conn: conn, pending: map[uint64]chan qmpResponse{}, changed: make(chan struct{})}
	r := bufio.NewReader(conn)
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(deadline)
	}
	greeting, err := r.ReadBytes('\n')
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting from %s: %w", path, err)
	}
	var g wireMessage
	if err := json.Unmarshal(greeting, &g); err != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %s: not a QMP greeting: %q", path, greeting)
	}
	go q.readLoop(r)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) readLoop(r *bufio.Reader) {
	dec := json.NewDecoder(r)
	var err error
	for {
		var m wireMessage
		if err = dec.Decode(&m); err != nil {
			break
		}
		q.mu.Lock()
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Timestamp = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			q.events = append(q.events, ev)
			q.taken = append(q.taken, false)
			q.notifyLocked()
		case m.ID != nil:
			if ch, ok := q.pending[*m.ID]; ok {
				delete(q.pending, *m.ID)
				resp := qmpResponse{ret: m.Return}
				if m.Error != nil {
					resp.err = &QMPError{Class: m.Error.Class, Desc: m.Error.Desc}
				}
				ch <- resp
			}
		}
		q.mu.Unlock()
	}
	q.mu.Lock()
	q.readErr = err
	q.closed = true
	for id, ch := range q.pending {
		delete(q.pending, id)
		close(ch)
	}
	q.notifyLocked()
	q.mu.Unlock()
}

func (q *QMP) notifyLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// Execute runs one command. args (marshalled as "arguments") may be nil;
// result, when not nil, receives the "return" value.
func (q *QMP) Execute(ctx context.Context, command string, args, result any) error {
	return q.execute(ctx, command, args, result, nil)
}

// execute runs one command; oob, when set, is sent with the command as
// ancillary data (SCM_RIGHTS for getfd).
func (q *QMP) execute(ctx context.Context, command string, args, result any, oob []byte) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, ErrQMPClosed)
	}
	q.nextID++
	id := q.nextID
	ch := make(chan qmpResponse, 1)
	q.pending[id] = ch
	q.mu.Unlock()

	msg := map[string]any{"execute": command, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	q.writeMu.Lock()
	if oob != nil {
		uc, ok := q.conn.(*net.UnixConn)
		if !ok {
			err = errors.New("file descriptors need a unix socket")
		} else {
			_, _, err = uc.WriteMsgUnix(append(b, '\n'), oob, nil)
		}
	} else {
		_, err = q.conn.Write(append(b, '\n'))
	}
	q.writeMu.Unlock()
	if err != nil {
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", command, ErrQMPClosed)
		}
		if resp.err != nil {
			resp.err.Command = command
			return resp.err
		}
		if result != nil {
			if err := json.Unmarshal(resp.ret, result); err != nil {
				return fmt.Errorf("qmp %s: decode %s: %w", command, resp.ret, err)
			}
		}
		return nil
	case <-ctx.Done():
		q.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (q *QMP) forget(id uint64) {
	q.mu.Lock()
	delete(q.pending, id)
	q.mu.Unlock()
}

// Status is the answer to query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
}

// QueryStatus asks whether the guest runs.
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := q.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Stop pauses the guest's CPUs.
func (q *QMP) Stop(ctx context.Context) error { return q.Execute(ctx, "stop", nil, nil) }

// Cont resumes a stopped guest.
func (q *QMP) Cont(ctx context.Context) error { return q.Execute(ctx, "cont", nil, nil) }

// Quit makes QEMU exit (it flushes its block devices first). QEMU may
// close the connection before answering; that counts as success.
func (q *QMP) Quit(ctx context.Context) error {
	err := q.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrQMPClosed) {
		return nil
	}
	return err
}

// WaitEvent returns the oldest event named name that no earlier WaitEvent
// returned, waiting for it until ctx ends or the connection closes.
func (q *QMP) WaitEvent(ctx context.Context, name string) (Event, error) {
	for {
		q.mu.Lock()
		for i, ev := range q.events {
			if !q.taken[i] && ev.Name == name {
				q.taken[i] = true
				q.mu.Unlock()
				return ev, nil
			}
		}
		closed, changed := q.closed, q.changed
		q.mu.Unlock()
		if closed {
			return Event{}, fmt.Errorf("qmp: wait for event %s: %w", name, ErrQMPClosed)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: wait for event %s: %w", name, ctx.Err())
		}
	}
}

// Events returns every event received so far, oldest first.
func (q *QMP) Events() []Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]Event(nil), q.events...)
}

// Close ends the connection (QEMU keeps running).
func (q *QMP) Close() error {
	return q.conn.Close()
}
