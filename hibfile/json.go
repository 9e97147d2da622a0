package hibfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"github.com/hibdisk/hibdisk/disklayer"
)

// The JSON format of a snapshot (hib export, hib import), for producers
// that are not Linux (an OS under test, a harness):
//
//	{
//	  "format": "hibdisk-hibernate",
//	  "version": 1,
//	  "snapshot": {
//	    "timestamp": "2025-01-02T03:04:05.000000006Z",   RFC 3339
//	    "kernel_version": "...", "total_memory_kb": 524288,
//	    "source": "...", "status": "complete" | "partial", "arch": "x86_64",
//	    "blob_size": 1234,            recomputed on import
//	    "total_processes": 2,         recomputed on import
//	    "processes": [{
//	      "pid": 1, "parent_pid": 0, "name": "init", "state": "sleeping",
//	      "registers_offset": 0 | null, "registers_size": 216,
//	      "memory_start": 4194304, "memory_size": 8192, "cwd_path": "/",
//	      "mappings": [{"virtual_addr": 4194304, "size": 4096, "physical_addr": null,
//	                    "page_size": 4096, "permissions": "rw-p", "flags": "private,anonymous",
//	                    "blob_offset": 4096 | null, "path": "", "file_offset": 0}],
//	      "files": [{"fd": 0, "path": "/dev/tty", "position": 0, "flags": "O_RDWR"}],
//	      "signals": [{"signal_number": 2, "handler_address": 4198656 | null,
//	                   "disposition": "default" | "ignore" | "handler", "flags": "SA_RESTART"}]
//	    }]
//	  },
//	  "blob": [{"offset": 4096, "data": "<base64>"}]
//	}
//
// Numbers are 64-bit integers (addresses and offsets as decimal). "blob"
// holds the content of the stored ranges (registers and mappings with a
// blob_offset) at hibernate file offsets; content not listed is zero, and
// every entry must lie inside a stored range. Export lists the non-zero
// pages of each range, merged into runs, in offset order, so exporting,
// importing and exporting again gives identical bytes.
type jsonFile struct {
	Format   string      `json:"format"`
	Version  int         `json:"version"`
	Snapshot *Snapshot   `json:"snapshot"`
	Blob     []jsonChunk `json:"blob"`
}

type jsonChunk struct {
	Offset int64  `json:"offset"`
	Data   []byte `json:"data"`
}

const (
	jsonFormat  = "hibdisk-hibernate"
	jsonVersion = 1
	// exportGrain is the unit export drops when all-zero.
	exportGrain = 4096
)

// Export writes the snapshot v in the JSON format, indented.
func Export(w io.Writer, v *View) error {
	s, err := v.Load()
	if err != nil {
		return err
	}
	f := jsonFile{Format: jsonFormat, Version: jsonVersion, Snapshot: s, Blob: []jsonChunk{}}
	if s.BlobFilePath == "" {
		for _, r := range s.ranges() {
			if err := exportRange(v, r.Range, &f.Blob); err != nil {
				return err
			}
		}
	}
	for i := range s.Processes {
		p := &s.Processes[i]
		// Empty lists as [] rather than null: the format has no null lists.
		if p.Mappings == nil {
			p.Mappings = []Mapping{}
		}
		if p.Files == nil {
			p.Files = []File{}
		}
		if p.Signals == nil {
			p.Signals = []Signal{}
		}
	}
	if s.Processes == nil {
		s.Processes = []Process{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		return fmt.Errorf("export %q: %w", v.LayerPath(), err)
	}
	return nil
}

// exportRange appends the non-zero grains of r as merged chunks.
func exportRange(v *View, r disklayer.Range, out *[]jsonChunk) error {
	const step = 1 << 20
	buf := make([]byte, step)
	var run *jsonChunk
	for off := r.Off; off < r.End(); off += step {
		n := min(step, r.End()-off)
		if err := v.ReadBlob(buf[:n], off); err != nil {
			return err
		}
		for g := int64(0); g < n; {
			// Grains are aligned to the hibernate file, clipped to the range.
			e := min((off+g)/exportGrain*exportGrain+exportGrain-off, n)
			piece := buf[g:e]
			if isZero(piece) {
				run = nil
			} else {
				if run == nil || run.Offset+int64(len(run.Data)) != off+g {
					*out = append(*out, jsonChunk{Offset: off + g})
					run = &(*out)[len(*out)-1]
				}
				run.Data = append(run.Data, piece...)
			}
			g = e
		}
	}
	return nil
}

func isZero(p []byte) bool {
	var zero [exportGrain]byte
	for len(p) > 0 {
		n := min(len(p), exportGrain)
		if !bytes.Equal(p[:n], zero[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// Import reads a snapshot in the JSON format and saves it (Save) as the
// snapshot of the top layer of the chain at path.
func Import(path string, r io.Reader) (SaveResult, error) {
	fail := func(err error) (SaveResult, error) {
		return SaveResult{}, fmt.Errorf("import into %q: %w", path, err)
	}
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var f jsonFile
	if err := dec.Decode(&f); err != nil {
		return fail(fmt.Errorf("decode JSON: %w: %w", err, disklayer.ErrInvalid))
	}
	if f.Format != jsonFormat || f.Version != jsonVersion {
		return fail(fmt.Errorf("format %q version %d, want %q version %d: %w", f.Format, f.Version, jsonFormat, jsonVersion, disklayer.ErrInvalid))
	}
	if f.Snapshot == nil {
		return fail(fmt.Errorf("no snapshot: %w", disklayer.ErrInvalid))
	}
	s := f.Snapshot
	ranges := s.ranges()
	img := &MemoryImage{}
	for _, c := range f.Blob {
		if !insideRanges(ranges, disklayer.Range{Off: c.Offset, Len: int64(len(c.Data))}) {
			return fail(fmt.Errorf("blob entry [%#x, %#x) is not inside a stored range: %w", c.Offset, c.Offset+int64(len(c.Data)), disklayer.ErrInvalid))
		}
		img.Put(c.Offset, c.Data)
	}
	return Save(path, s, img)
}

func insideRanges(ranges []blobRange, r disklayer.Range) bool {
	for _, x := range ranges {
		if r.Off >= x.Off && r.End() <= x.End() {
			return true
		}
	}
	return false
}
