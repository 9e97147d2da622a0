package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"
)

func init() {
	register(command{name: "info", summary: "show an image (--backing-chain: and every layer below it)", run: runInfo})
}

// layerJSON is one element of `hibdisk info --json`, top layer first.
// Field names follow `qemu-img info --output=json` where it has them.
// The format is stable: fields are only ever added.
type layerJSON struct {
	Filename              string `json:"filename"`
	Format                string `json:"format"`
	VirtualSize           int64  `json:"virtual-size"`
	ActualSize            int64  `json:"actual-size,omitempty"`
	SectorSize            int    `json:"sector-size"`
	Depth                 int    `json:"depth"`
	UUID                  string `json:"uuid,omitempty"`
	Label                 string `json:"label,omitempty"`
	Created               string `json:"created,omitempty"`
	ReadOnly              bool   `json:"read-only"`
	Sealed                bool   `json:"sealed,omitempty"`
	BackingFilename       string `json:"backing-filename,omitempty"`
	FullBackingFilename   string `json:"full-backing-filename,omitempty"`
	BackingFilenameFormat string `json:"backing-filename-format,omitempty"`
	BackingUUID           string `json:"backing-uuid,omitempty"`
	BackingSize           int64  `json:"backing-size,omitempty"`
	BackingDigest         string `json:"backing-digest,omitempty"`
	BackingGeneration     int64  `json:"backing-generation,omitempty"`
	BackingContentDigest  string `json:"backing-content-digest,omitempty"`
	BackingFileIdentity   string `json:"backing-file-identity,omitempty"`
	Generation            int64  `json:"generation,omitempty"`
	ReadCache             bool   `json:"read-cache,omitempty"`
	DataSectors           *int64 `json:"data-sectors,omitempty"`
	TombstoneSectors      *int64 `json:"tombstone-sectors,omitempty"`
	HibernateBlocks       *int64 `json:"hibernate-blocks,omitempty"`
	PageSize              int    `json:"page-size,omitempty"`
	// FreeBytes is the layer's free space (SQLite's free list);
	// ReclaimsSpace says whether the layer gives it back to the
	// filesystem while in use (false: a layer made before that, or by
	// convert; `hibdisk compact` converts it).
	FreeBytes     *int64 `json:"free-bytes,omitempty"`
	ReclaimsSpace *bool  `json:"reclaims-space,omitempty"`
	// HibernateImage is on the layer an OS hibernation image was written
	// into (the chain's hibernate file holds it).
	HibernateImage *imageJSON `json:"hibernate-image,omitempty"`
}

func runInfo(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "info", "[--backing-chain] [--output=human|json] [-f FMT] [-U] FILE")
	var f imgFlags
	f.addFormat(fs, "hibdisk, raw, nbd, openvmm, qcow2, vmdk, vhdx, vpc, vdi, ...")
	f.addOutput(fs, "json: an array, top layer first")
	f.addShare(fs)
	chain := fs.Bool("backing-chain", false, "show the whole backing chain, top first (default: the top image only, as qemu-img)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	if _, err := checkFormat("-f", f.format, pos[0]); err != nil {
		return err
	}
	print := func(out []layerJSON) error {
		if !*chain {
			out = out[:1]
		}
		if f.json {
			return writeJSON(e.stdout, out)
		}
		for i, l := range out {
			if i > 0 {
				fmt.Fprintln(e.stdout)
			}
			printInfo(e.stdout, l)
		}
		return nil
	}
	d, err := diffdisk.OpenImage(pos[0])
	var missing *diffdisk.MissingParentError
	if errors.As(err, &missing) {
		// The layer itself is readable: show it, then say what is
		// missing below it and how to point it there (explain).
		if top, terr := diffdisk.TopLayer(pos[0]); terr == nil {
			print([]layerJSON{infoJSON(top)})
		}
		return err
	}
	if err != nil {
		return err
	}
	defer d.Close()
	layers, err := d.Layers()
	if err != nil {
		return err
	}
	out := make([]layerJSON, len(layers))
	for i, l := range layers {
		out[i] = infoJSON(l)
	}
	if err := addImageInfo(d, out); err != nil {
		return err
	}
	return print(out)
}

func infoJSON(l diffdisk.LayerInfo) layerJSON {
	j := layerJSON{
		Filename: l.Path, Format: l.Format, VirtualSize: l.Size, SectorSize: l.SectorSize,
		Depth: l.Depth, UUID: l.UUID, Label: l.Label, ReadOnly: l.ReadOnly, Sealed: l.Sealed, Generation: l.Generation, ReadCache: l.ReadCache,
	}
	if !l.CreatedAt.IsZero() {
		j.Created = l.CreatedAt.UTC().Format(time.RFC3339)
	}
	if p := l.Parent; p != nil {
		j.BackingFilename = p.Path
		j.FullBackingFilename = p.Path
		if !filepath.IsAbs(p.Path) {
			j.FullBackingFilename = filepath.Join(filepath.Dir(l.Path), p.Path)
		}
		j.BackingFilenameFormat = p.Format
		j.BackingUUID = p.UUID
		j.BackingSize = p.Size
		j.BackingDigest = p.Digest
		j.BackingGeneration = p.Generation
		j.BackingContentDigest = p.SHA256
		j.BackingFileIdentity = p.Stat
	}
	if s := l.Stats; s != nil {
		j.ActualSize = s.FileBytes
		j.DataSectors = &s.DataSectors
		j.TombstoneSectors = &s.TombstoneSectors
		blocks := s.DataBlocks + s.TombstoneBlocks
		j.HibernateBlocks = &blocks
		j.PageSize = s.PageSize
		j.FreeBytes = &s.FreeBytes
		j.ReclaimsSpace = &s.Reclaims
	} else if size, err := fileSize(l.Path); err == nil {
		j.ActualSize = size
	}
	return j
}

func printInfo(w io.Writer, l layerJSON) {
	fmt.Fprintf(w, "image: %s\n", l.Filename)
	fmt.Fprintf(w, "file format: %s\n", l.Format)
	fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", formatSize(l.VirtualSize), l.VirtualSize)
	fmt.Fprintf(w, "disk size: %s\n", formatSize(l.ActualSize))
	fmt.Fprintf(w, "sector size: %d\n", l.SectorSize)
	if l.UUID != "" {
		fmt.Fprintf(w, "uuid: %s\n", l.UUID)
	}
	if l.Created != "" {
		fmt.Fprintf(w, "created: %s\n", l.Created)
	}
	if l.Label != "" {
		fmt.Fprintf(w, "label: %s\n", l.Label)
	}
	if l.ReadOnly {
		fmt.Fprintln(w, "read only: yes")
	}
	if l.Sealed {
		fmt.Fprintln(w, "sealed: yes (its identity is its file's sha256, which hibdisk seal prints)")
	}
	if l.ReadCache {
		fmt.Fprintln(w, "read cache: yes (serving it writable fills it from below)")
	}
	if l.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s (actual path: %s)\n", l.BackingFilename, l.FullBackingFilename)
		fmt.Fprintf(w, "backing file format: %s\n", l.BackingFilenameFormat)
		if l.BackingFilenameFormat == "hibdisk" && l.BackingContentDigest != "" {
			fmt.Fprintf(w, "backing file digest: %s (recorded when this layer was sealed)\n", l.BackingContentDigest)
		}
	}
	if l.DataSectors != nil {
		fmt.Fprintf(w, "data sectors: %d (%s)\n", *l.DataSectors, formatSize(*l.DataSectors*int64(l.SectorSize)))
		fmt.Fprintf(w, "tombstones: %d\n", *l.TombstoneSectors)
		fmt.Fprintf(w, "hibernate blocks: %d\n", *l.HibernateBlocks)
	}
	if l.FreeBytes != nil {
		if *l.ReclaimsSpace {
			fmt.Fprintf(w, "free space: %s (given back while in use)\n", formatSize(*l.FreeBytes))
		} else {
			fmt.Fprintf(w, "free space: %s (kept until hibdisk compact, which also makes the layer give it back while in use)\n", formatSize(*l.FreeBytes))
		}
	}
	if h := l.HibernateImage; h != nil {
		kernel := h.Kernel
		if kernel == "" {
			kernel = "kernel not recorded"
		}
		fmt.Fprintf(w, "hibernate image: %s (%s, %s), %s of RAM, %d pages (%s), compression %s\n",
			h.Source, kernel, h.Arch, formatSize(h.MemoryBytes), h.Pages, formatSize(h.Bytes), h.Compression)
	}
}
