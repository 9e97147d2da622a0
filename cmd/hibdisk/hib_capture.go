package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/hibdisk/hibdisk/hibfile"
)

func init() {
	registerHib(command{name: "capture", summary: "capture live Linux processes from /proc into a layer's hibernate file", run: runHibCapture})
}

func runHibCapture(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "hib capture", "--pid PID[,PID...] [--children] [--no-freeze] LAYER")
	pidList := fs.String("pid", "", "comma-separated pids to capture")
	children := fs.Bool("children", false, "also capture every descendant")
	noFreeze := fs.Bool("no-freeze", false, "do not stop the processes with ptrace (no registers; memory may change while read)")
	pos, err := parseArgs(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *pidList == "" {
		return usagef("--pid is required")
	}
	var pids []int
	for _, s := range strings.Split(*pidList, ",") {
		pid, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || pid <= 0 {
			return usagef("--pid: %q is not a pid", s)
		}
		pids = append(pids, pid)
	}
	res, err := hibfile.Capture(pos[0], hibfile.CaptureOptions{PIDs: pids, Children: *children, NoFreeze: *noFreeze})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "captured %d processes into %s: snapshot %d, %s\n", len(res.Snapshot.Processes), pos[0], res.SnapshotID, res.Snapshot.Status)
	fmt.Fprintf(e.stdout, "read %d bytes; stored %d changed blocks of %d bytes, %d unchanged blocks left to the layers below\n",
		res.StoredBytes, res.ChangedBlocks, res.BlockSize, res.UnchangedBlocks)
	if res.UnreadableBytes > 0 {
		fmt.Fprintf(e.stdout, "warning: %d bytes could not be read and were saved as zeros\n", res.UnreadableBytes)
	}
	return nil
}
