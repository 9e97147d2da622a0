package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/internal/s3test"
)

// TestRebaseOntoStoreCLI: job layers made over a local golden chain move
// onto chains pushed to a store, and read the same once the local chain
// is gone. rebase -u onto the same chain pushed only rewrites the
// reference (pinned to the manifest, as create -b s3://... pins it);
// a safe rebase onto another chain keeps the job's view by copying what
// differs into it. --endpoint without an s3:// base is bad usage.
func TestRebaseOntoStoreCLI(t *testing.T) {
	srv := s3test.Start(t, "golden")
	t.Setenv("HIBDISK_CACHE", t.TempDir())
	dir := testDir(t)
	cliChain(t, dir, 5) // bases/base.db (r0) <- mid.db (r1) <- top.db (r2)
	e := srv.Endpoint
	mustHib(t, dir, "push", "--endpoint", e, "mid.db", "s3://golden/g:v1")
	mustHib(t, dir, "push", "--endpoint", e, "bases/base.db", "s3://golden/g:base")
	mustHib(t, dir, "create", "-q", "-b", "mid.db", "job.db") // reads r1

	r := hib(t, dir, "rebase", "-u", "--endpoint", e, "-b", "other.db", "top.db")
	if r.code != 2 || !strings.Contains(r.stderr, "--endpoint needs -b s3://") {
		t.Errorf("rebase --endpoint onto a file: exit %d, %q", r.code, r.stderr)
	}
	r = hib(t, dir, "rebase", "-u", "--endpoint", e, "-b", "s3://golden/g:v9", "top.db")
	if r.code != 1 || !strings.Contains(r.stderr, `no tag "v9"`) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("rebase onto a missing tag: exit %d, %q", r.code, r.stderr)
	}

	// The reference only: mid.db is what v1 holds.
	mustHib(t, dir, "rebase", "-u", "--endpoint", e, "-b", "s3://golden/g:v1", "top.db")
	// A safe rebase from r1 (mid.db) onto r0 (the base pushed alone):
	// job.db keeps reading r1.
	mustHib(t, dir, "rebase", "--endpoint", e, "-b", "s3://golden/g:base", "job.db")
	info := mustHib(t, dir, "info", "--backing-chain", "top.db")
	if !strings.Contains(info, "s3://golden/g@sha256:") {
		t.Errorf("info of the rebased top does not name the pinned store parent:\n%s", info)
	}

	// The local chain gone, both read from the store.
	if err := os.Rename(filepath.Join(dir, "bases"), filepath.Join(dir, "bases.gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "mid.db"), filepath.Join(dir, "mid.gone")); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "compare", "r2.img", "top.db")
	mustHib(t, dir, "compare", "r1.img", "job.db")
	mustHib(t, dir, "check", "top.db")
	// A report over the two reads only what it shows (no layer read
	// whole to count its rows).
	mustHib(t, dir, "report", "-o", "report.html", "job.db", "top.db")
	// Each layer read from the store is named by its blob.
	if html, err := os.ReadFile(filepath.Join(dir, "report.html")); err != nil || !strings.Contains(string(html), "s3://golden/g/blobs/sha256/") {
		t.Errorf("report over store parents: %v; names the layers' blobs: %v", err, strings.Contains(string(html), "s3://golden/g/blobs/sha256/"))
	}
	// Back onto a local file: standalone copies of what the store held.
	mustHib(t, dir, "convert", "-O", "raw", "job.db", "job.raw")
	mustHib(t, dir, "compare", "r1.img", "job.raw")
	if err := os.Rename(filepath.Join(dir, "mid.gone"), filepath.Join(dir, "mid.db")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "bases.gone"), filepath.Join(dir, "bases")); err != nil {
		t.Fatal(err)
	}
	mustHib(t, dir, "rebase", "-b", "mid.db", "job.db")
	mustHib(t, dir, "compare", "r1.img", "job.db")
}
