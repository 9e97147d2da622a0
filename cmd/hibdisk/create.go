package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/remote"
)

func init() {
	register(command{name: "create", summary: "create a base layer, or a diff layer over a backing file", run: runCreate})
}

// createJSON is `hibdisk create --output=json`: the new layer, with
// qemu-img info's field names. Stable: fields are only added.
type createJSON struct {
	Filename              string `json:"filename"`
	Format                string `json:"format"`
	VirtualSize           int64  `json:"virtual-size"`
	SectorSize            int    `json:"sector-size"`
	UUID                  string `json:"uuid"`
	Label                 string `json:"label,omitempty"`
	ReadCache             bool   `json:"read-cache,omitempty"`
	BackingFilename       string `json:"backing-filename,omitempty"`
	BackingFilenameFormat string `json:"backing-filename-format,omitempty"`
}

func runCreate(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "create", "[-s SIZE] [--sector-size N] [-b BACKING [-F FMT] [--read-cache] [--endpoint URL]] [--label L] [-f hibdisk] [-q] [--output=human|json] FILE [SIZE]")
	var f imgFlags
	fs.StringVar(&f.format, "f", "", "the new image's format: hibdisk, the only one create makes (for others: qemu-img create, or hibdisk convert -O)")
	f.addOutput(fs, "json: one object describing the new layer")
	f.addQuiet(fs)
	sizeFlag := fs.String("s", "", "virtual size (K/M/G/T suffixes); a diff layer defaults to its backing file's size")
	sectorSize := fs.Int("sector-size", 0, "sector size in bytes, a power of two 512..65536 (default 4096, or the backing layer's)")
	backing := fs.String("b", "", "backing file: the parent of the new diff layer")
	format := fs.String("F", "", "backing file format, never guessed: hibdisk (may be omitted), raw, nbd (an NBD URI), s3 (an s3://BUCKET/PREFIX[:TAG] URL, may be omitted), openvmm, or one QEMU reads: qcow2, qcow, qed, vmdk, vhdx, vpc, vdi, parallels")
	endpoint := fs.String("endpoint", "", "with -b s3://...: URL of the S3-compatible server (default: AWS_ENDPOINT_URL_S3, the profile, or AWS), recorded in the layer")
	label := fs.String("label", "", "free-text label stored in the layer")
	readCache := fs.Bool("read-cache", false, "make the diff layer a read cache of its backing file: serving it writable fills it with what reads fetch from below (for remote bases)")
	pos, err := parseArgs(fs, args, 1, 2)
	if err != nil {
		return err
	}
	if f.format != "" && f.format != "hibdisk" {
		return usagef("-f %s: hibdisk create makes hibdisk layers only (for %s: qemu-img create -f %s, or hibdisk convert -O %s from a layer)", f.format, f.format, f.format, f.format)
	}
	f.format = ""
	if err := f.done(e); err != nil {
		return err
	}
	if len(pos) == 2 { // qemu-img create FILE SIZE
		if *sizeFlag != "" {
			return usagef("size given twice (-s and a second argument)")
		}
		*sizeFlag = pos[1]
	}
	var size int64
	if *sizeFlag != "" {
		if size, err = parseSize(*sizeFlag); err != nil {
			return usageError{msg: err.Error()}
		}
	} else if *backing == "" {
		return usagef("a base layer needs a size: -s SIZE")
	}
	if *format != "" && *backing == "" {
		return usagef("-F needs -b")
	}
	if *endpoint != "" && !strings.HasPrefix(*backing, remote.Scheme) {
		return usagef("--endpoint needs -b s3://BUCKET/PREFIX[:TAG]")
	}
	path := pos[0]
	if err := diffdisk.Create(path, diffdisk.CreateOptions{
		Size: size, SectorSize: *sectorSize, Backing: *backing, BackingFormat: *format, Label: *label, ReadCache: *readCache, Endpoint: *endpoint,
	}); err != nil {
		return err
	}
	d, err := diffdisk.Open(path, diffdisk.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer d.Close()
	layers, err := d.Chain() // not Layers: its counts would read a lazy base whole
	if err != nil {
		return err
	}
	top := layers[0]
	if f.json {
		j := createJSON{Filename: path, Format: "hibdisk", VirtualSize: top.Size, SectorSize: top.SectorSize, UUID: top.UUID, Label: top.Label, ReadCache: top.ReadCache}
		if p := top.Parent; p != nil {
			j.BackingFilename, j.BackingFilenameFormat = p.Path, p.Format
		}
		return writeJSON(e.stdout, j)
	}
	fmt.Fprintf(e.stdout, "Formatting '%s', fmt=hibdisk size=%d sector_size=%d", path, top.Size, top.SectorSize)
	if top.Parent != nil {
		fmt.Fprintf(e.stdout, " backing_file=%s backing_fmt=%s", top.Parent.Path, top.Parent.Format)
	}
	fmt.Fprintln(e.stdout)
	return nil
}
