// Package testguest names the one test guest every QEMU test, `make run`
// and `make demo` boot: Debian's cloud kernel and an initramfs whose /init
// is test/qemu/guest, built by vmm/qemu/guestkit and cached under the
// module's build/guest. Sharing the options here keeps the kit's input
// hash, and so its cache directory, the same for all of them.
package testguest

import (
	"context"
	"path/filepath"

	"github.com/hibdisk/hibdisk/vmm/qemu/guestkit"
)

// Options are the guestkit options of the test guest of the module
// rooted at root.
func Options(root string) guestkit.Options {
	return guestkit.Options{
		CacheDir:     filepath.Join(root, "build", "guest"),
		GuestPackage: filepath.Join(root, "test", "qemu", "guest"),
		Modules:      append(append([]string(nil), guestkit.VirtioBlockModules...), guestkit.Ext4Modules...),
	}
}

// Build returns the test guest's kit, building it when build/guest holds
// no kit of the current inputs; logf (may be nil) hears of slow steps.
func Build(ctx context.Context, root string, logf func(format string, args ...any)) (*guestkit.Kit, error) {
	opts := Options(root)
	opts.Logf = logf
	return guestkit.Build(ctx, opts)
}
