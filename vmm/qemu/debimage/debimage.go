// Package debimage builds a real Debian guest for QEMU tests: a minimal
// Debian root (systemd, udev, the cloud kernel with its own initrd) made
// by mmdebstrap, with a directory of configuration files copied over it,
// written into an ext4 image with mkfs.ext4 -d. The kernel and initrd
// are copied out of the root's /boot, so the image boots with
// `-kernel vmlinuz -initrd initrd.img -append 'root=/dev/vda rw'`.
//
// mmdebstrap uses the machine's own apt sources (no mirror argument), so
// it needs network access to a Debian mirror the first time; everything
// after that comes from the cache. Building needs root: mmdebstrap's root
// mode installs packages with their owners, and mkfs.ext4 -d copies the
// owners it finds (e2fsprogs 1.47.0, Debian 12's, reads a directory but
// not a tarball).
//
// # Cache layout
//
//	CacheDir/img-KEY/rootfs.img   the ext4 image (sparse, Size bytes)
//	CacheDir/img-KEY/vmlinuz      the kernel from the image's /boot
//	CacheDir/img-KEY/initrd.img   its initrd (made by initramfs-tools)
//	CacheDir/img-KEY/image.json   what was built, and how long it took
//
// # Invariants
//
//   - KEY is a hash of every input: the recipe version, the mmdebstrap
//     and mkfs.ext4 arguments (suite, variant, packages, size, label) and
//     every file of the overlay with its path and mode. The Debian
//     archive is not an input: a cached image keeps the package versions
//     it was built with until an input changes.
//   - An image directory appears complete or not at all: it is built in a
//     temporary directory and renamed into place, under a file lock that
//     serialises concurrent builders.
package debimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// recipeVersion changes whenever the build steps do, so images of an
// older recipe are not reused.
const recipeVersion = "debimage-2"

// Label is the ext4 volume label of every image.
const Label = "hibdisk-debian"

// Options say what to build.
type Options struct {
	// CacheDir holds built images.
	CacheDir string
	// Suite is the Debian release, e.g. "bookworm".
	Suite string
	// Packages are installed on top of mmdebstrap's minbase variant
	// (--include). They must bring a kernel (linux-image-*) and an init.
	Packages []string
	// Overlay is a directory whose tree is copied over the root after
	// mmdebstrap: files, directories and symlinks with their modes, owned
	// by root. Every file under it is an input of the image.
	Overlay string
	// Size is the ext4 image's size in bytes, a multiple of 1 KiB.
	Size int64
	// Logf, when set, is told about slow steps.
	Logf func(format string, args ...any)
}

// Image is a built guest.
type Image struct {
	Rootfs   string   `json:"rootfs"` // the ext4 image
	Kernel   string   `json:"kernel"`
	Initrd   string   `json:"initrd"`
	Release  string   `json:"release"` // uname -r of the kernel
	Packages []string `json:"packages"`
	// BuildSeconds is how long the cold build took (mmdebstrap, overlay,
	// mkfs.ext4), whenever it ran.
	BuildSeconds float64 `json:"build_seconds"`
	// Built says this call built the image (false: it came from the cache).
	Built bool   `json:"-"`
	Dir   string `json:"-"`
}

// Build returns the image for opts, building it when no cached image
// matches.
func Build(ctx context.Context, opts Options) (*Image, error) {
	if opts.CacheDir == "" || opts.Suite == "" || opts.Overlay == "" || opts.Size <= 0 || opts.Size%1024 != 0 {
		return nil, errors.New("debimage: CacheDir, Suite, Overlay and Size (a multiple of 1 KiB) are required")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("debimage: building a Debian image needs root (mmdebstrap root mode, file owners for mkfs.ext4 -d)")
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("debimage: %w", err)
	}
	unlock, err := lockDir(opts.CacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	key, err := inputHash(opts)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(opts.CacheDir, "img-"+key[:16])
	if img, err := readImage(dir); err == nil {
		return img, nil
	}
	// Under the lock, a build directory is a crashed builder's.
	stale, _ := filepath.Glob(filepath.Join(opts.CacheDir, "build-*"))
	for _, d := range stale {
		if err := removeUnmounted(d); err != nil && opts.Logf != nil {
			opts.Logf("debimage: %v", err)
		}
	}
	return build(ctx, opts, dir)
}

func build(ctx context.Context, opts Options, dir string) (*Image, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	started := time.Now()
	tmp, err := os.MkdirTemp(opts.CacheDir, "build-")
	if err != nil {
		return nil, fmt.Errorf("debimage: %w", err)
	}
	defer func() {
		if err := removeUnmounted(tmp); err != nil {
			logf("debimage: %v", err)
		}
	}()
	root, out := filepath.Join(tmp, "root"), filepath.Join(tmp, "img")
	if err := os.Mkdir(out, 0o755); err != nil {
		return nil, fmt.Errorf("debimage: %w", err)
	}
	logf("debimage: building %s: mmdebstrap %s", dir, strings.Join(mmdebstrapArgs(opts), " "))
	if _, err := run(ctx, "mmdebstrap", append(mmdebstrapArgs(opts), root)...); err != nil {
		return nil, fmt.Errorf("debimage: %w", err)
	}
	if err := copyTree(opts.Overlay, root); err != nil {
		return nil, err
	}
	img, err := copyBoot(root, out)
	if err != nil {
		return nil, err
	}
	img.Packages = opts.Packages
	img.Rootfs = filepath.Join(out, "rootfs.img")
	if _, err := run(ctx, "mkfs.ext4", append(mkfsArgs(opts), "-d", root, img.Rootfs, mkfsSize(opts.Size))...); err != nil {
		return nil, fmt.Errorf("debimage: %w", err)
	}
	if info, err := os.Stat(img.Rootfs); err != nil || info.Size() != opts.Size {
		return nil, fmt.Errorf("debimage: mkfs.ext4 made %s of %v bytes, want %d (%v)", img.Rootfs, sizeOf(info), opts.Size, err)
	}
	img.BuildSeconds = time.Since(started).Seconds()
	if err := writeImageJSON(out, img); err != nil {
		return nil, err
	}
	os.RemoveAll(dir) // a partial image of a crashed builder (no image.json)
	if err := os.Rename(out, dir); err != nil {
		return nil, fmt.Errorf("debimage: %w", err)
	}
	logf("debimage: built %s in %.0fs", dir, img.BuildSeconds)
	img, err = readImage(dir)
	if img != nil {
		img.Built = true
	}
	return img, err
}

// mmdebstrapArgs is the mmdebstrap command line without the target.
func mmdebstrapArgs(opts Options) []string {
	args := []string{"--variant=minbase"}
	if len(opts.Packages) > 0 {
		args = append(args, "--include="+strings.Join(opts.Packages, ","))
	}
	return append(args, opts.Suite)
}

// mkfsArgs is the mkfs.ext4 command line without -d, target and size.
func mkfsArgs(Options) []string {
	return []string{"-q", "-F", "-L", Label}
}

// mkfsSize is mke2fs's fs-size argument for size bytes: a plain number
// would count blocks, so it is given in KiB with a suffix.
func mkfsSize(size int64) string { return strconv.FormatInt(size>>10, 10) + "k" }

func sizeOf(info fs.FileInfo) any {
	if info == nil {
		return "?"
	}
	return info.Size()
}

// inputHash names an image by everything that goes into it.
func inputHash(opts Options) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nmmdebstrap %s\nmkfs.ext4 %s\nsize %d\n", recipeVersion,
		strings.Join(mmdebstrapArgs(opts), " "), strings.Join(mkfsArgs(opts), " "), opts.Size)
	err := filepath.WalkDir(opts.Overlay, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(opts.Overlay, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %v\n", rel, info.Mode())
		switch {
		case d.Type().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%d\n", len(b))
			h.Write(b)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "-> %s\n", target)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("debimage: overlay: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyTree copies the overlay's files, directories and symlinks over
// root, keeping their permission bits; what it writes is owned by root
// (the builder).
func copyTree(from, root string) error {
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		to := filepath.Join(root, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(to, info.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			os.Remove(to)
			return os.Symlink(target, to)
		case d.Type().IsRegular():
			return copyFile(p, to, info.Mode().Perm())
		}
		return fmt.Errorf("%s: not a file, directory or symlink", p)
	})
	if err != nil {
		return fmt.Errorf("debimage: overlay: %w", err)
	}
	return nil
}

func copyFile(from, to string, perm fs.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	os.Remove(to) // replace a symlink rather than write through it
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	return os.Chmod(to, perm) // the umask may have narrowed it
}

// copyBoot copies the one kernel and its initrd from root/boot to out.
func copyBoot(root, out string) (*Image, error) {
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return nil, fmt.Errorf("debimage: the root holds %d kernels (boot/vmlinuz-*), want 1", len(kernels))
	}
	release := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	img := &Image{Release: release, Kernel: filepath.Join(out, "vmlinuz"), Initrd: filepath.Join(out, "initrd.img")}
	if err := copyFile(kernels[0], img.Kernel, 0o644); err != nil {
		return nil, fmt.Errorf("debimage: kernel: %w", err)
	}
	if err := copyFile(filepath.Join(root, "boot", "initrd.img-"+release), img.Initrd, 0o644); err != nil {
		return nil, fmt.Errorf("debimage: initrd: %w", err)
	}
	return img, nil
}

// lockDir takes an exclusive flock on dir/.lock until unlock is called.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("debimage: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("debimage: lock %s: %w", f.Name(), err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

// removeUnmounted removes dir unless something is mounted below it:
// mmdebstrap mounts /proc, /sys and /dev into the root while it
// installs, and a build it could not finish (killed, timed out) may
// leave them, which a recursive remove must never walk into.
func removeUnmounted(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("not removing %s: %w", dir, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent major:minor root MOUNTPOINT ...
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			return fmt.Errorf("not removing %s: %s is mounted (umount it, then remove the directory)", dir, f[4])
		}
	}
	return os.RemoveAll(dir)
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	// On cancel, let mmdebstrap unmount what it mounted before it goes.
	cmd.Cancel = func() error { return cmd.Process.Signal(unix.SIGTERM) }
	cmd.WaitDelay = time.Minute
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, lastLines(string(out), 20))
	}
	return out, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func writeImageJSON(dir string, img *Image) error {
	rel := *img
	rel.Rootfs, rel.Kernel, rel.Initrd = "rootfs.img", "vmlinuz", "initrd.img"
	b, err := json.MarshalIndent(rel, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "image.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("debimage: %w", err)
	}
	return nil
}

// readImage loads a complete image directory.
func readImage(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return nil, err
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("debimage: %s: %w", dir, err)
	}
	img.Dir = dir
	img.Rootfs = filepath.Join(dir, img.Rootfs)
	img.Kernel = filepath.Join(dir, img.Kernel)
	img.Initrd = filepath.Join(dir, img.Initrd)
	for _, p := range []string{img.Rootfs, img.Kernel, img.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("debimage: incomplete image: %w", err)
		}
	}
	return &img, nil
}
