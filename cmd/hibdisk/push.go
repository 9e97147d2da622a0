package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/hibdisk/hibdisk/remote"
)

func init() {
	register(command{name: "push", summary: "seal a chain and upload it to an S3 bucket under a tag", run: runPush})
	register(command{name: "pull", summary: "download a pushed chain from an S3 bucket, verified", run: runPull})
	register(command{name: "ls-remote", summary: "list the tags of an S3 bucket prefix and what they name", run: runLsRemote})
}

// remoteFlags are the flags every store command takes.
type remoteFlags struct {
	imgFlags // --output, --json
	endpoint *string
}

func addRemoteFlags(fs *flagSet, jsonHelp string) *remoteFlags {
	f := &remoteFlags{endpoint: fs.String("endpoint", "", "URL of an S3-compatible server (default: AWS_ENDPOINT_URL_S3, the profile, or AWS); path-style addressing")}
	f.addOutput(fs, jsonHelp)
	return f
}

// openStore parses an s3:// URL and connects to its store.
func openStore(ctx context.Context, f *remoteFlags, arg string) (*remote.Store, remote.URL, error) {
	u, err := remote.ParseURL(arg)
	if err != nil {
		return nil, remote.URL{}, usagef("%v", err)
	}
	s, err := remote.Open(ctx, u, remote.Options{Endpoint: *f.endpoint})
	if err != nil {
		return nil, remote.URL{}, err
	}
	return s, u, nil
}

// pushJSON is `hibdisk push --json`. Stable: fields are only added.
type pushJSON struct {
	URL      string          `json:"url"`      // s3://BUCKET/PREFIX:TAG
	Manifest string          `json:"manifest"` // sha256:<hex>
	Previous string          `json:"previous,omitempty"`
	Layers   []pushLayerJSON `json:"layers"` // base first
}

type pushLayerJSON struct {
	Filename string `json:"filename"`
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	Uploaded bool   `json:"uploaded"` // false: the store had it
	Sealed   bool   `json:"sealed"`   // this push sealed it
}

func runPush(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "push", "[--endpoint URL] [--json|--output=json] LAYER s3://BUCKET/PREFIX[:TAG]")
	f := addRemoteFlags(fs, "one object: the tag, the manifest and each layer")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	s, u, err := openStore(ctx, f, pos[1])
	if err != nil {
		return err
	}
	if u.Digest != "" {
		return usagef("push takes a tag (s3://BUCKET/PREFIX:TAG), not a digest")
	}
	tag := u.Tag
	if tag == "" {
		tag = remote.DefaultTag
	}
	res, err := remote.Push(ctx, s, pos[0], tag, remote.PushOptions{})
	if err != nil {
		return err
	}
	out := pushJSON{URL: res.URL.String(), Manifest: res.Manifest, Previous: res.Previous}
	for _, l := range res.Layers {
		out.Layers = append(out.Layers, pushLayerJSON{Filename: l.Path, Digest: l.Digest, Size: l.Size, Uploaded: l.Uploaded, Sealed: l.Sealed})
	}
	if f.json {
		return writeJSON(e.stdout, out)
	}
	for _, l := range out.Layers {
		what := "uploaded"
		if !l.Uploaded {
			what = "already there"
		}
		fmt.Fprintf(e.stdout, "%s  %s  %s (%s)\n", l.Digest, l.Filename, what, formatSize(l.Size))
	}
	fmt.Fprintf(e.stdout, "%s -> %s\n", out.URL, out.Manifest)
	return nil
}

// pullJSON is `hibdisk pull --json`. Stable: fields are only added.
type pullJSON struct {
	Manifest string          `json:"manifest"`
	Top      string          `json:"top"` // the top layer's file
	Layers   []pullLayerJSON `json:"layers"`
}

type pullLayerJSON struct {
	Filename   string `json:"filename"`
	Digest     string `json:"digest"`
	Size       int64  `json:"size"`
	Downloaded bool   `json:"downloaded"` // false: the file was there with this digest
}

func runPull(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "pull", "[--endpoint URL] [--json|--output=json] s3://BUCKET/PREFIX[:TAG|@sha256:HEX] DIR")
	f := addRemoteFlags(fs, "one object: the manifest, the top layer and each layer")
	pos, err := parseArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	s, u, err := openStore(ctx, f, pos[0])
	if err != nil {
		return err
	}
	res, err := remote.Pull(ctx, s, u, pos[1])
	if err != nil {
		return err
	}
	out := pullJSON{Manifest: res.Manifest, Top: res.Top}
	for _, l := range res.Layers {
		out.Layers = append(out.Layers, pullLayerJSON{Filename: l.Path, Digest: l.Digest, Size: l.Size, Downloaded: l.Downloaded})
	}
	if f.json {
		return writeJSON(e.stdout, out)
	}
	for _, l := range out.Layers {
		what := "downloaded"
		if !l.Downloaded {
			what = "already there"
		}
		fmt.Fprintf(e.stdout, "%s  %s  %s (%s)\n", l.Digest, l.Filename, what, formatSize(l.Size))
	}
	fmt.Fprintf(e.stdout, "top: %s (hibdisk create -b %s JOB.db)\n", out.Top, out.Top)
	return nil
}

// lsRemoteJSON is one tag of `hibdisk ls-remote --json`. Stable: fields
// are only added.
type lsRemoteJSON struct {
	Tag      string `json:"tag"`
	Manifest string `json:"manifest"`
	Layers   int    `json:"layers"`
	Bytes    int64  `json:"bytes"`        // of the layer files
	DiskSize int64  `json:"virtual-size"` // of the disk
}

func runLsRemote(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "ls-remote", "[--endpoint URL] [--json|--output=json] s3://BUCKET/PREFIX")
	f := addRemoteFlags(fs, "an array: one object per tag")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := f.done(e); err != nil {
		return err
	}
	s, u, err := openStore(ctx, f, pos[0])
	if err != nil {
		return err
	}
	if u.Tag != "" || u.Digest != "" {
		return usagef("ls-remote lists every tag of s3://BUCKET/PREFIX: leave out %q", u.String()[len(u.Base()):])
	}
	tags, err := remote.List(ctx, s)
	if err != nil {
		return err
	}
	out := make([]lsRemoteJSON, len(tags))
	for i, t := range tags {
		out[i] = lsRemoteJSON{Tag: t.Tag, Manifest: t.Manifest, Layers: t.Layers, Bytes: t.Bytes, DiskSize: t.DiskSize}
	}
	if f.json {
		return writeJSON(e.stdout, out)
	}
	if len(out) == 0 {
		fmt.Fprintf(e.stderr, "hibdisk ls-remote: no tags under %s\n", s.URL())
	}
	for _, t := range out {
		fmt.Fprintf(e.stdout, "%s  %s  %d layers, %s (disk %s)\n", t.Tag, t.Manifest, t.Layers, formatSize(t.Bytes), formatSize(t.DiskSize))
	}
	return nil
}

// explainRemote is explain's line for the errors of the store commands,
// or "" when it has none better than the error's own.
func explainRemote(err error) string {
	var moved *remote.TagMovedError
	var creds *remote.CredentialsError
	switch {
	case errors.As(err, &moved):
		return moved.Error()
	case errors.As(err, &creds):
		return oneLine(creds.Error())
	}
	return ""
}
