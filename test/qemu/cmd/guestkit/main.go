// Command guestkit builds the QEMU test guest (test/qemu/testguest: the
// kernel and initramfs `make test` boots) when build/guest has none of
// the current inputs, and prints the paths of its kernel and initramfs,
// one a line. scripts/run-demo.sh and scripts/demo.sh use it, so the
// shell never repeats how the kit is made:
//
//	go run ./test/qemu/cmd/guestkit [-root DIR]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/hibdisk/hibdisk/test/qemu/testguest"
)

func main() {
	root := flag.String("root", ".", "the module's root directory (the kit is cached under ROOT/build/guest)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: guestkit [-root DIR]")
		os.Exit(2)
	}
	abs, err := filepath.Abs(*root)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestkit: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
	kit, err := testguest.Build(ctx, abs, logf)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestkit: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(kit.Kernel)
	fmt.Println(kit.Initrd)
}
