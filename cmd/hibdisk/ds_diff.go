package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/hibdisk/hibdisk/datastore"
	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/hibfile"
	"github.com/hibdisk/hibdisk/inspect"
)

// diffReport is `hibdisk diff --json`: inspect's report and the
// datastore entries that differ (null when an image is raw and has no
// datastore).
type diffReport struct {
	*inspect.Report
	Datastore *[]datastore.EntryDiff `json:"datastore"`
	// OSImage compares the OS hibernation images when both hibernate
	// files hold one.
	OSImage *hibfile.OSImageDiff `json:"os_image,omitempty"`
}

// diffDatastores compares the datastores of chains a and b; nil when
// either top is a raw image (no datastore). Any other failure is an error.
func diffDatastores(a, b *diffdisk.Disk) (*[]datastore.EntryDiff, error) {
	sa, err := datastore.Open(a, datastore.Options{})
	if errors.Is(err, disklayer.ErrNotLayer) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer sa.Close()
	sb, err := datastore.Open(b, datastore.Options{})
	if errors.Is(err, disklayer.ErrNotLayer) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer sb.Close()
	d, err := datastore.Diff(sa, sb)
	if err != nil {
		return nil, err
	}
	return &d, nil
}

func printDatastoreDiff(w io.Writer, d *[]datastore.EntryDiff) {
	switch {
	case d == nil:
		fmt.Fprintln(w, "datastore: not compared (a raw image has no datastore)")
	case len(*d) == 0:
		fmt.Fprintln(w, "datastore: identical")
	default:
		fmt.Fprintf(w, "datastore: %d entries differ\n", len(*d))
		for _, e := range *d {
			mark := map[string]string{"added": "+", "removed": "-", "changed": "~"}[e.Change]
			fmt.Fprintf(w, "  %s %s %s\n", mark, e.Type, e.Key)
		}
	}
}
