package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// fakeQMP is a QMP server that greets, then answers each command with
// handle's reply (a JSON object without the id), preceded by any events
// handle returns.
func fakeQMP(t *testing.T, handle func(cmd string, args json.RawMessage) (reply string, events []string)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintln(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`)
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
				ID        json.RawMessage `json:"id"`
			}
			if err := json.Unmarshal(line, &req); err != nil {
				return
			}
			reply, events := handle(req.Execute, req.Arguments)
			for _, ev := range events {
				fmt.Fprintf(c, `{"event": %q, "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}`+"\n", ev)
			}
			if reply == "" {
				return // hang up, as QEMU does after quit
			}
			fmt.Fprintf(c, "%s, \"id\": %s}\n", reply[:len(reply)-1], req.ID)
		}
	}()
	return path
}

func TestQMPClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var gotCaps atomic.Bool // set by the server goroutine
	path := fakeQMP(t, func(cmd string, args json.RawMessage) (string, []string) {
		switch cmd {
		case "qmp_capabilities":
			gotCaps.Store(true)
			return `{"return": {}}`, nil
		case "query-status":
			return `{"return": {"running": false, "status": "paused"}}`, nil
		case "stop":
			return `{"return": {}}`, []string{"STOP"}
		case "cont":
			return `{"return": {}}`, []string{"RESUME"}
		case "echo":
			return fmt.Sprintf(`{"return": %s}`, args), nil
		case "quit":
			return "", []string{"SHUTDOWN"}
		default:
			return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`, nil
		}
	})
	q, err := DialQMP(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if !gotCaps.Load() {
		t.Error("DialQMP did not send qmp_capabilities")
	}
	st, err := q.QueryStatus(ctx)
	if err != nil || st != (Status{Running: false, Status: "paused"}) {
		t.Errorf("QueryStatus = %+v, %v", st, err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := q.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	// Events are handed out by name, each once, in arrival order.
	if ev, err := q.WaitEvent(ctx, "RESUME"); err != nil || ev.Name != "RESUME" || ev.Timestamp.Unix() != 1 {
		t.Errorf("WaitEvent(RESUME) = %+v, %v", ev, err)
	}
	if ev, err := q.WaitEvent(ctx, "STOP"); err != nil || ev.Name != "STOP" {
		t.Errorf("WaitEvent(STOP) = %+v, %v", ev, err)
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := q.WaitEvent(short, "STOP"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second WaitEvent(STOP) = %v, want a deadline error", err)
	}
	cancelShort()
	var echoed map[string]int
	if err := q.Execute(ctx, "echo", map[string]int{"n": 7}, &echoed); err != nil || echoed["n"] != 7 {
		t.Errorf("echo = %v, %v", echoed, err)
	}
	var qerr *QMPError
	if err := q.Execute(ctx, "bogus", nil, nil); !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" || qerr.Command != "bogus" {
		t.Errorf("bogus command: %v", err)
	}
	if err := q.Quit(ctx); err != nil {
		t.Errorf("Quit: %v", err)
	}
	if _, err := q.WaitEvent(ctx, "SHUTDOWN"); err != nil {
		t.Errorf("SHUTDOWN before the hang-up is still delivered: %v", err)
	}
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("after hang-up: %v, want ErrQMPClosed", err)
	}
	if _, err := q.WaitEvent(ctx, "STOP"); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("WaitEvent after hang-up: %v, want ErrQMPClosed", err)
	}
	if n := len(q.Events()); n != 3 {
		t.Errorf("Events() has %d events, want 3 (STOP, RESUME, SHUTDOWN)", n)
	}
}

func TestDialQMPNotQMP(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.sock")
	if len(path) > 100 {
		t.Skip("temp dir path too long for a unix socket")
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			fmt.Fprintln(c, `{"hello": 1}`)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := DialQMP(ctx, path); err == nil {
		t.Error("DialQMP accepted a server that is not QMP")
	}
}
