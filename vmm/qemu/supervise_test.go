package qemu

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNextTop(t *testing.T) {
	dir := t.TempDir()
	snap := filepath.Join(dir, "job.db")
	if got, want := NextTop(snap), filepath.Join(dir, "job-1.db"); got != want {
		t.Errorf("NextTop(job.db) = %q, want %q", got, want)
	}
	if err := os.WriteFile(filepath.Join(dir, "job-1.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := NextTop(snap), filepath.Join(dir, "job-2.db"); got != want {
		t.Errorf("NextTop(job.db) with job-1.db taken = %q, want %q", got, want)
	}
	if got, want := NextTop(filepath.Join(dir, "other")), filepath.Join(dir, "other-1.db"); got != want {
		t.Errorf("NextTop(other) = %q, want %q", got, want)
	}
}

// TestRequestHibernate: the requesting side of the control protocol,
// against a stand-in supervisor: no state file, a reply, and a process
// that hangs up without one.
func TestRequestHibernate(t *testing.T) {
	dir := t.TempDir()
	layer := filepath.Join(dir, "top.db")
	if _, err := RequestHibernate(layer, HibernateRequest{}); err == nil || !strings.Contains(err.Error(), "no running machine on") {
		t.Errorf("without a state file: %v", err)
	}
	sock := filepath.Join(dir, "control.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, _ := json.Marshal(stateFile{PID: 1, Control: sock})
	if err := os.WriteFile(layer+StateFileSuffix, b, 0o600); err != nil {
		t.Fatal(err)
	}
	got := make(chan controlRequest, 2)
	go func() {
		for i := 0; ; i++ {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			var req controlRequest
			json.NewDecoder(conn).Decode(&req)
			got <- req
			if i == 0 {
				json.NewEncoder(conn).Encode(ControlReply{Error: "boom", Hibernate: &HibernateReport{Layer: "top.db"}})
			}
			conn.Close()
		}
	}()
	r, err := RequestHibernate(layer, HibernateRequest{Continue: true, Top: "next.db"})
	if err != nil || r.Error != "boom" || r.Hibernate == nil || r.Hibernate.Layer != "top.db" {
		t.Errorf("reply: %+v, %v", r, err)
	}
	if req := <-got; req != (controlRequest{Op: "hibernate", Continue: true, Top: "next.db"}) {
		t.Errorf("request: %+v", req)
	}
	if _, err := RequestHibernate(layer, HibernateRequest{}); err == nil || !strings.Contains(err.Error(), "closed the connection without an answer") {
		t.Errorf("hang-up: %v", err)
	}
}
