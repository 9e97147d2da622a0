package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hibdisk/hibdisk/diffdisk"
)

// serveStatsJSON is what `serve --stats FILE` writes when serving ends
// (the README documents it). Stable: fields are only added.
type serveStatsJSON struct {
	Exports []exportStatsJSON `json:"exports"`
}

type exportStatsJSON struct {
	Name string `json:"name"`
	File string `json:"file"`
	// GuestReads and GuestReadBytes count the reads clients made of
	// the export.
	GuestReads     int64            `json:"guest_reads"`
	GuestReadBytes int64            `json:"guest_read_bytes"`
	StoreBases     []storeStatsJSON `json:"store_bases,omitempty"`
}

// storeStatsJSON is one lazy remote base (create -b s3://...).
type storeStatsJSON struct {
	URL string `json:"url"`
	// Reads and ReadBytes: what the layers' SQLite asked of their blobs.
	Reads     int64 `json:"reads"`
	ReadBytes int64 `json:"read_bytes"`
	// FetchedChunks and FetchedBytes came from the store, verified, in
	// GETs requests (failed ones included); CacheHits chunks came from
	// the machine's chunk cache.
	FetchedChunks int64 `json:"fetched_chunks"`
	FetchedBytes  int64 `json:"fetched_bytes"`
	GETs          int64 `json:"gets"`
	CacheHits     int64 `json:"cache_hits"`
	Retries       int64 `json:"retries"`
}

// serveStats gathers the counters of every export's chain.
func serveStats(o serveOptions, disks []*diffdisk.Disk) serveStatsJSON {
	return diskStats(o.specs, disks)
}

// diskStats gathers the counters of each chain of specs (disks[i] is
// specs[i]'s; disks may be longer, or shorter after a failed open).
func diskStats(specs []exportSpec, disks []*diffdisk.Disk) serveStatsJSON {
	var out serveStatsJSON
	for i, s := range specs {
		if i >= len(disks) {
			break
		}
		file := s.file
		if abs, err := filepath.Abs(file); err == nil {
			file = abs
		}
		reads, bytes := disks[i].GuestReads()
		x := exportStatsJSON{Name: s.name, File: file, GuestReads: reads, GuestReadBytes: bytes}
		for _, b := range disks[i].StoreBases() {
			x.StoreBases = append(x.StoreBases, storeStatsJSON{
				URL: b.URL, Reads: b.Reads, ReadBytes: b.ReadBytes,
				FetchedChunks: b.FetchedChunks, FetchedBytes: b.FetchedBytes, GETs: b.GETs, CacheHits: b.CacheHits, Retries: b.Retries,
			})
		}
		out.Exports = append(out.Exports, x)
	}
	return out
}

// reportStats says, when serving ends, what the guest read of each
// export over a lazy remote base and what the base fetched (on w), and
// writes every export's counters to path when it is not "".
func reportStats(w io.Writer, path string, st serveStatsJSON) error {
	for _, x := range st.Exports {
		for _, b := range x.StoreBases {
			fmt.Fprintf(w, "hibdisk serve: export %q: guest read %d bytes in %d requests; store base %s: fetched %d chunks (%d bytes) in %d GETs, %d from the cache, %d retries\n",
				x.Name, x.GuestReadBytes, x.GuestReads, b.URL, b.FetchedChunks, b.FetchedBytes, b.GETs, b.CacheHits, b.Retries)
		}
	}
	if path == "" {
		return nil
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--stats: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("--stats: %w", err)
	}
	return nil
}
