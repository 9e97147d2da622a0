package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
)

// imgFlags are the flags qemu-img's commands share, with qemu-img's
// meaning: -f (the input's format), --output=json|human (and hibdisk's
// own --json), -q, -U/--force-share. A command registers the ones
// qemu-img's same command has, then calls done after parsing.
type imgFlags struct {
	format     string
	output     string
	json       bool
	quiet      bool
	forceShare bool
}

// addFormat registers -f; what says which formats the command reads.
func (f *imgFlags) addFormat(fs *flagSet, what string) {
	fs.StringVar(&f.format, "f", "", "the input's format, checked, never forced: "+what+" (default: detected)")
}

// addOutput registers --output and its synonym --json.
func (f *imgFlags) addOutput(fs *flagSet, what string) {
	fs.StringVar(&f.output, "output", "human", "output format: human or json ("+what+")")
	fs.BoolVar(&f.json, "json", false, "the same as --output=json")
}

// addQuiet registers -q.
func (f *imgFlags) addQuiet(fs *flagSet) {
	fs.BoolVar(&f.quiet, "q", false, "quiet: print nothing on success (errors still go to stderr)")
}

// addShare registers -U and --force-share. hibdisk's read-only commands
// always tolerate a writer of the top layer (they read its committed
// state), so the flag changes nothing: it is accepted because qemu-img
// needs it to read an image in use.
func (f *imgFlags) addShare(fs *flagSet) {
	const help = "accepted for qemu-img compatibility: reading a layer in use is always allowed (committed state)"
	fs.BoolVar(&f.forceShare, "U", false, help)
	fs.BoolVar(&f.forceShare, "force-share", false, help)
}

// done validates the flags after parsing and applies -q and JSON errors
// to e.
func (f *imgFlags) done(e *env) error {
	switch f.output {
	case "", "human":
	case "json":
		f.json = true
	default:
		return usagef("--output=%s: want human or json", f.output)
	}
	if f.json {
		e.jsonErrors = true
	}
	if f.quiet {
		e.stdout = io.Discard
		e.isTerminal = false
	}
	if f.format != "" && !isInputFormat(f.format) {
		return usagef("-f %s: want one of %s", f.format, inputFormatList())
	}
	return nil
}

func isInputFormat(f string) bool { return slices.Contains(inputFormats(), f) }

func inputFormatList() string { return strings.Join(inputFormats(), ", ") }

// inputFormats are the formats -f may name.
func inputFormats() []string {
	return append([]string{disklayer.FormatHibdisk, disklayer.FormatRaw, disklayer.FormatNBD, disklayer.FormatOpenVMM},
		"qcow2", "qcow", "qed", "vmdk", "vhdx", "vpc", "vdi", "parallels")
}

// checkFormat refuses path when -f (flag, "-f" or "-F") named another
// format than the one path has; want "" accepts any. It returns the
// detected format. qemu-img -f forces a format; hibdisk checks it
// instead, since reading an image as the wrong format is a silently
// different disk.
func checkFormat(flag, want, path string) (string, error) {
	got, err := diffdisk.ImageFormat(path)
	if err != nil {
		return "", err
	}
	if want != "" && want != got {
		return got, fmt.Errorf("%q is a %s image, not %s: say %s %s (or leave %s out: formats are detected)", path, got, want, flag, got, flag)
	}
	return got, nil
}

// onlyLayers refuses -f naming anything but hibdisk, for the commands
// that change a hibdisk layer (commit, rebase, resize).
func onlyLayers(cmd, format, path string) error {
	if format != "" && format != disklayer.FormatHibdisk {
		return usagef("-f %s: hibdisk %s changes hibdisk layers only (for a %s image: qemu-img %s -f %s)", format, cmd, format, cmd, format)
	}
	if format == "" {
		return nil
	}
	_, err := checkFormat("-f", format, path)
	return err
}
