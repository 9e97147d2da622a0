package qemu_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
	"github.com/hibdisk/hibdisk/vmm/qemu"
)

// TestQMPStopContQuit drives a real QEMU over QMP: stop pauses the guest
// (STOP event, status paused), cont resumes it (RESUME event), quit ends
// it (SHUTDOWN event), and the machine's layers are flushed on the way
// out.
func TestQMPStopContQuit(t *testing.T) {
	guestKit(t)
	dir := t.TempDir()
	layer := filepath.Join(dir, "disk.db")
	if err := diffdisk.Create(layer, diffdisk.CreateOptions{Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	d := openDisk(t, layer)
	defer d.Close()
	// The hello guest boots, reports and powers off; Shutdown's quit may
	// race that power-off, and both must end the machine cleanly.
	m := startGuest(t, guestproto.TaskHello, nil, qemu.Disk{Name: "data", Layer: d})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := m.QMP()

	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WaitEvent(ctx, "STOP"); err != nil {
		t.Fatal(err)
	}
	st, err := q.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running || st.Status != "paused" {
		t.Errorf("after stop: %+v, want paused", st)
	}
	if err := q.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WaitEvent(ctx, "RESUME"); err != nil {
		t.Fatal(err)
	}
	if st, err := q.QueryStatus(ctx); err != nil || !st.Running {
		t.Errorf("after cont: %+v, %v; want running", st, err)
	}
	var qerr *qemu.QMPError
	if err := q.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v, want a CommandNotFound QMPError", err)
	}
	if _, err := m.WaitLine(ctx, func(l string) bool { return l == guestproto.Pass }); err != nil {
		t.Fatalf("guest: %v\n%v", err, m.Lines())
	}
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := q.WaitEvent(ctx, "SHUTDOWN"); err != nil {
		t.Errorf("no SHUTDOWN event: %v (events %v)", err, q.Events())
	}
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qemu.ErrQMPClosed) {
		t.Errorf("QMP after QEMU exited: %v, want ErrQMPClosed", err)
	}
}
