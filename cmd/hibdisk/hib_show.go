package main

import (
	"context"
	"fmt"
	"time"

	"github.com/hibdisk/hibdisk/hibfile"
)

func init() {
	registerHib(command{name: "show", summary: "summary of the newest snapshot visible in a chain", run: runHibShow})
}

// showSummary is `hib show --json`.
type showSummary struct {
	Layer          string    `json:"layer"`
	LayerDepth     int       `json:"layer_depth"`
	SnapshotID     int64     `json:"snapshot_id"`
	LayerUUID      string    `json:"layer_uuid"`
	Timestamp      time.Time `json:"timestamp"`
	Source         string    `json:"source"`
	Status         string    `json:"status"`
	KernelVersion  string    `json:"kernel_version"`
	Arch           string    `json:"arch"`
	TotalMemoryKB  int64     `json:"total_memory_kb"`
	TotalProcesses int64     `json:"total_processes"`
	Mappings       int       `json:"mappings"`
	StoredMappings int       `json:"stored_mappings"`
	StoredBytes    int64     `json:"stored_bytes"`
	Files          int       `json:"files"`
	Signals        int       `json:"signals"`
	BlobSize       int64     `json:"blob_size"`
	BlobFilePath   string    `json:"blob_file_path,omitempty"`
}

func runHibShow(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib show", "[--json] LAYER")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	showImage := func(_ *hibfile.Chain, o *hibfile.OSImage) error {
		if *asJSON {
			return writeJSON(e.stdout, o)
		}
		printOSImage(e.stdout, o)
		return nil
	}
	return withSnapshotOrImage(pos[0], func(v *hibfile.View) error {
		sum, err := summarize(v)
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(e.stdout, sum)
		}
		w := e.stdout
		fmt.Fprintf(w, "layer: %s (depth %d in the chain)\n", sum.Layer, sum.LayerDepth)
		fmt.Fprintf(w, "snapshot: %d of layer %s\n", sum.SnapshotID, sum.LayerUUID)
		fmt.Fprintf(w, "timestamp: %s\n", sum.Timestamp.Format(time.RFC3339Nano))
		fmt.Fprintf(w, "source: %s\nstatus: %s\n", sum.Source, sum.Status)
		fmt.Fprintf(w, "kernel: %s\narch: %s\n", sum.KernelVersion, sum.Arch)
		fmt.Fprintf(w, "memory: %d KiB\n", sum.TotalMemoryKB)
		fmt.Fprintf(w, "processes: %d\n", sum.TotalProcesses)
		fmt.Fprintf(w, "mappings: %d (%d stored, %d bytes)\n", sum.Mappings, sum.StoredMappings, sum.StoredBytes)
		fmt.Fprintf(w, "files: %d\nsignals: %d\n", sum.Files, sum.Signals)
		if sum.BlobFilePath != "" {
			fmt.Fprintf(w, "blob: external file %s\n", sum.BlobFilePath)
		} else {
			fmt.Fprintf(w, "blob size: %d bytes\n", sum.BlobSize)
		}
		return nil
	}, showImage)
}

// summarize loads the snapshot v shows and counts what it holds.
func summarize(v *hibfile.View) (showSummary, error) {
	s, err := v.Load()
	if err != nil {
		return showSummary{}, err
	}
	sum := showSummary{
		Layer: v.LayerPath(), LayerDepth: v.LayerDepth(), SnapshotID: s.ID, LayerUUID: s.LayerUUID,
		Timestamp: s.Timestamp, Source: s.Source, Status: s.Status, KernelVersion: s.KernelVersion, Arch: s.Arch,
		TotalMemoryKB: s.TotalMemoryKB, TotalProcesses: s.TotalProcesses, BlobSize: s.BlobSize, BlobFilePath: s.BlobFilePath,
	}
	for _, p := range s.Processes {
		sum.Mappings += len(p.Mappings)
		sum.Files += len(p.Files)
		sum.Signals += len(p.Signals)
		for _, m := range p.Mappings {
			if m.BlobOffset != nil {
				sum.StoredMappings++
				sum.StoredBytes += m.Size
			}
		}
	}
	return sum, nil
}
