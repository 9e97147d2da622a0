package qemu_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/test/qemu/guest/guestproto"
)

// vmProcess is a `hibdisk vm run|resume` process whose console (stdout)
// is read line by line.
type vmProcess struct {
	cmd    *exec.Cmd
	stderr bytes.Buffer
	done   chan error

	mu    sync.Mutex
	lines []string
}

func startVM(t *testing.T, dir string, args ...string) *vmProcess {
	t.Helper()
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	p := &vmProcess{cmd: exec.Command(bin, args...), done: make(chan error, 1)}
	p.cmd.Dir = dir
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, strings.TrimRight(sc.Text(), "\r"))
			p.mu.Unlock()
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// count polls the console for a count line of at least n and returns
// the first such count.
func (p *vmProcess) count(t *testing.T, n int64) int64 {
	t.Helper()
	deadline := time.Now().Add(guestTimeout)
	seen := 0
	for time.Now().Before(deadline) {
		p.mu.Lock()
		lines := p.lines[seen:]
		p.mu.Unlock()
		for _, l := range lines {
			if c, ok := guestproto.ParseCount(l); ok && c >= n {
				return c
			}
			if strings.Contains(l, guestproto.Fail) {
				t.Fatalf("guest failed: %s", l)
			}
		}
		seen += len(lines)
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no count >= %d within %v\nconsole tail:\n%s\nstderr:\n%s", n, guestTimeout, tail(p.Lines(), 20), p.stderr.String())
	return 0
}

func (p *vmProcess) Lines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.lines...)
}

// exit waits for the process to end and fails the test unless it exits 0.
func (p *vmProcess) exit(t *testing.T) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		if err != nil {
			t.Fatalf("hibdisk vm: %v\nstderr:\n%s", err, p.stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("hibdisk vm still running a minute after the hibernate\nstderr:\n%s", p.stderr.String())
	}
}

type hibernateReply struct {
	Error     string `json:"error"`
	Hibernate *struct {
		Layer          string  `json:"layer"`
		RAMBytes       int64   `json:"ram_bytes"`
		RAMBytesStored int64   `json:"ram_bytes_stored"`
		TotalSeconds   float64 `json:"total_seconds"`
	} `json:"hibernate"`
	Resume *struct {
		Top          string  `json:"top"`
		TotalSeconds float64 `json:"total_seconds"`
	} `json:"resume"`
}

// vmHibernate runs `hibdisk vm hibernate --json ARGS` once the machine's
// state file exists.
func vmHibernate(t *testing.T, dir, layer string, args ...string) hibernateReply {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, layer+".vm.json")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s.vm.json: the machine cannot be found", layer)
		}
	}
	bin, err := hibdiskBuild()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(append([]string{"vm", "hibernate", "--json"}, args...), layer)...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hibdisk vm hibernate %s: %v\n%s%s", layer, err, out, stderr.String())
	}
	var r hibernateReply
	if err := json.Unmarshal(out, &r); err != nil || r.Hibernate == nil {
		t.Fatalf("hibdisk vm hibernate --json: %v\n%s", err, out)
	}
	return r
}

// TestVMHibernateCLI: the workflow of the README through the CLI. `vm
// run` a counting guest, `vm hibernate` it from another process, `vm
// resume` it on a new layer, `vm hibernate --continue` (snapshot and go
// on in one step), hibernate again, and diff the snapshots.
func TestVMHibernateCLI(t *testing.T) {
	k := guestKit(t)
	dir := t.TempDir()
	hibdisk(t, "create", "-s", fmt.Sprint(hibDiskSize), filepath.Join(dir, "base.db"))
	hibdisk(t, "create", "-b", filepath.Join(dir, "base.db"), "-F", "hibdisk", filepath.Join(dir, "job.db"))
	run := startVM(t, dir, "vm", "run", "--kernel", k.Kernel, "--initrd", k.Initrd,
		"--append", guestproto.Cmdline(guestproto.TaskCounter, counterParams()), "--mem", fmt.Sprintf("%dM", hibGuestMiB), "data=job.db")
	run.count(t, 10)
	h := vmHibernate(t, dir, "job.db")
	run.exit(t)
	n, _ := lastCount(run.Lines())
	t.Logf("vm hibernate at count %d: %.1f MiB stored in %.2fs", n, float64(h.Hibernate.RAMBytesStored)/(1<<20), h.Hibernate.TotalSeconds)
	if _, err := os.Stat(filepath.Join(dir, "job.db.vm.json")); !os.IsNotExist(err) {
		t.Errorf("job.db.vm.json outlived the machine (%v)", err)
	}

	res := startVM(t, dir, "vm", "resume", "--top", "r1.db", "job.db")
	if first := res.count(t, 0); first < n || first > n+1 {
		t.Errorf("resumed guest counts %d first, want %d or %d", first, n, n+1)
	}
	res.count(t, n+10)
	h = vmHibernate(t, dir, "r1.db", "--continue", "--top", "r2.db")
	if h.Resume == nil || h.Resume.Top != "r2.db" {
		t.Fatalf("vm hibernate --continue did not resume on r2.db: %+v", h)
	}
	t.Logf("vm hibernate --continue: %.2f MiB stored, hibernate %.2fs, resume %.2fs", float64(h.Hibernate.RAMBytesStored)/(1<<20), h.Hibernate.TotalSeconds, h.Resume.TotalSeconds)
	if h.Hibernate.RAMBytesStored >= h.Hibernate.RAMBytes/10 {
		t.Errorf("stacked snapshot r1.db stored %d of %d bytes of RAM, want < 10%%", h.Hibernate.RAMBytesStored, h.Hibernate.RAMBytes)
	}
	n1, _ := lastCount(res.Lines())
	res.count(t, n1+5) // the same process goes on with the machine on r2.db
	vmHibernate(t, dir, "r2.db")
	res.exit(t)
	for _, l := range res.Lines() {
		if strings.Contains(l, "Linux version") {
			t.Errorf("a resumed machine booted: %q", l)
		}
	}
	rep := hibdiskDiff(t, filepath.Join(dir, "job.db"), filepath.Join(dir, "r1.db"))
	if rep.Hibernate == nil || rep.Hibernate.ChangedBytes == 0 || rep.Disk.ChangedBytes == 0 {
		t.Errorf("hibdisk diff job.db r1.db: disk %d bytes, hibernate %+v; want both changed", rep.Disk.ChangedBytes, rep.Hibernate)
	}
	for _, layer := range []string{"job.db", "r1.db", "r2.db"} {
		checkLayer(t, filepath.Join(dir, layer))
	}
}
