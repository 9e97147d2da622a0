package main

import (
	"context"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/remote"
)

func init() {
	register(command{name: "rebase", summary: "change a layer's backing file, keeping its view (-u: only the reference)", run: runRebase})
}

func runRebase(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "rebase", "[-u] [-p] [-q] [-f hibdisk] [-U] -b NEWBASE [-F raw|hibdisk|openvmm|s3] [--endpoint URL] FILE")
	var f imgFlags
	f.addFormat(fs, "hibdisk (rebase changes hibdisk layers only)")
	f.addQuiet(fs)
	f.addShare(fs)
	backing := fs.String("b", "", `new backing file ("" makes the layer standalone)`)
	format := fs.String("F", "", "new backing file format: hibdisk (may be omitted), raw (required for a raw file), openvmm (required for an OpenVMM file) or s3 (may be omitted for s3://BUCKET/PREFIX[:TAG], a chain hibdisk push stored)")
	endpoint := fs.String("endpoint", "", "with -b s3://...: URL of the S3-compatible server (default: AWS_ENDPOINT_URL_S3, the profile, or AWS), recorded in the layer")
	unsafe := fs.Bool("u", false, "unsafe: only rewrite the reference, copy nothing")
	progress := fs.Bool("p", false, "show progress (on a terminal only)")
	var backingSet bool
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	fs.Visit(func(f *flagT) { backingSet = backingSet || f.Name == "b" })
	if !backingSet {
		return usagef("-b NEWBASE is required (-b \"\" makes the layer standalone)")
	}
	if *endpoint != "" && !strings.HasPrefix(*backing, remote.Scheme) {
		return usagef("--endpoint needs -b s3://BUCKET/PREFIX[:TAG]")
	}
	if err := onlyLayers("rebase", f.format, pos[0]); err != nil {
		return err
	}
	opts := diffdisk.RebaseOptions{Format: *format, Unsafe: *unsafe, Endpoint: *endpoint}
	if *progress {
		p := newProgress(e)
		opts.Progress = p.update
		defer p.done()
	}
	return diffdisk.RebaseWith(pos[0], *backing, opts)
}
