package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/remote/chunks"
)

// fillChunkCache reads a blob of n chunks through a chunks.Reader into
// the cache in dir.
func fillChunkCache(t *testing.T, dir string, n int) {
	t.Helper()
	blobPath := filepath.Join(t.TempDir(), "blob")
	data := make([]byte, n*chunks.MinChunkSize)
	for i := range data {
		data[i] = byte(i * 31 / 7)
	}
	if err := os.WriteFile(blobPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(blobPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	digests, size, err := chunks.HashChunks(f, chunks.MinChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	src, err := chunks.OpenFileSource(blobPath)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cache, err := chunks.OpenCache(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := chunks.NewReader(chunks.Blob{Name: "test", Size: size, ChunkSize: chunks.MinChunkSize, Chunks: digests}, src, chunks.Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.ReadAt(make([]byte, size), 0); err != nil {
		t.Fatal(err)
	}
}

// TestCacheLsPrune: ls counts what a Reader cached, prune keeps the
// bound it is given, and neither makes a cache that is not there.
func TestCacheLsPrune(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	fillChunkCache(t, cache, 5)

	var ls cacheLsJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "cache", "ls", "--json", "--dir", cache)), &ls); err != nil {
		t.Fatal(err)
	}
	if ls.Count != 5 || ls.Bytes != 5*chunks.MinChunkSize || len(ls.Chunks) != 5 || !strings.HasPrefix(ls.Chunks[0].Digest, "sha256:") {
		t.Errorf("cache ls --json: %+v; want 5 chunks of %d bytes", ls, chunks.MinChunkSize)
	}
	long := mustHib(t, dir, "cache", "ls", "-l", "--dir", cache)
	if n := strings.Count(long, "sha256:"); n != 5 || !strings.HasSuffix(long, cache+": 5 chunks, 320 KiB\n") {
		t.Errorf("cache ls -l:\n%s", long)
	}

	var pr cachePruneJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "cache", "prune", "--max", "128K", "--json", "--dir", cache)), &pr); err != nil {
		t.Fatal(err)
	}
	if pr.Removed != 3 || pr.Kept != 2 || pr.KeptBytes != 2*chunks.MinChunkSize {
		t.Errorf("cache prune --max 128K: %+v; want 3 removed, 2 kept", pr)
	}
	if out := mustHib(t, dir, "cache", "prune", "--max", "0", "--dir", cache); out != cache+": removed 2 chunks (128 KiB), kept 0 (0 B)\n" {
		t.Errorf("cache prune --max 0: %q", out)
	}
	if out := mustHib(t, dir, "cache", "ls", "--dir", cache); out != cache+": 0 chunks, 0 B\n" {
		t.Errorf("cache ls of an emptied cache: %q", out)
	}

	missing := filepath.Join(dir, "none")
	mustHib(t, dir, "cache", "ls", "--dir", missing)
	mustHib(t, dir, "cache", "prune", "--dir", missing)
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("ls and prune made a cache directory that was not there (%v)", err)
	}

	r := hib(t, dir, "cache", "prune", "--max", "lots", "--dir", cache)
	if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "hibdisk cache prune: --max") {
		t.Errorf("cache prune --max lots: exit %d, stderr %q; want exit 2 and one line", r.code, r.stderr)
	}
}

// TestCacheSizeFromEnvironment: HIBDISK_CACHE_SIZE bounds the machine's
// cache (prune without --max keeps it), and a value that is not a size
// is one error line naming the variable.
func TestCacheSizeFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	fillChunkCache(t, cache, 5)
	t.Setenv("HIBDISK_CACHE_SIZE", "192K")
	var pr cachePruneJSON
	if err := json.Unmarshal([]byte(mustHib(t, dir, "cache", "prune", "--json", "--dir", cache)), &pr); err != nil {
		t.Fatal(err)
	}
	if pr.Removed != 2 || pr.Kept != 3 {
		t.Errorf("cache prune under HIBDISK_CACHE_SIZE=192K: %+v; want 2 removed, 3 kept", pr)
	}
	for _, bad := range []string{"lots", "0", "-1G"} {
		t.Setenv("HIBDISK_CACHE_SIZE", bad)
		for _, args := range [][]string{{"cache", "prune", "--dir", cache}, {"cache", "ls", "--dir", cache}} {
			r := hib(t, dir, args...)
			if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "HIBDISK_CACHE_SIZE=") || !strings.Contains(r.stderr, "such as 32G") {
				t.Errorf("%s under HIBDISK_CACHE_SIZE=%s: exit %d, stderr %q; want exit 1 and one line naming the variable", strings.Join(args, " "), bad, r.code, r.stderr)
			}
		}
	}
}
