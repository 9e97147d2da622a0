// Package guestkit builds a small Linux guest for QEMU tests: Debian's
// cloud kernel and an initramfs, assembled with u-root's pkg/cpio, whose
// /init is a static Go program (the guest) plus the kernel modules it
// needs.
//
// The kernel comes from the Debian archive the machine already uses:
// `apt-cache depends linux-image-cloud-amd64` names the current versioned
// package, `apt-get download` fetches it and `dpkg-deb -x` unpacks it.
// Modules are taken from that package with their dependencies (read from
// each module's own .modinfo, since the package ships no modules.dep);
// modules the kernel has built in are left out. .ko.xz files are
// decompressed with the xz binary, so the guest can load them with
// finit_module without a decompressor.
//
// # Initramfs layout
//
//	/init                    the guest program (CGO_ENABLED=0 GOAMD64=v1)
//	/dev/console             char 5,1 (the kernel opens it before /init runs)
//	/dev /proc /sys /mnt /tmp
//	/lib/modules/NAME.ko     each module, uncompressed
//	/lib/modules/load-order  module names, one a line, dependencies first
//
// # Invariants
//
//   - A kit is cached under Options.CacheDir in a directory named by a hash
//     of every input (kernel package and version, module list, the guest's
//     source files, the Go version, the kit layout version) and is rebuilt
//     only when one changes.
//   - A kit directory appears complete or not at all: it is built in a
//     temporary directory and renamed into place, under a file lock that
//     serialises concurrent builders (go test runs packages in parallel).
package guestkit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
	"golang.org/x/sys/unix"
)

// layoutVersion changes whenever the kit's layout or build recipe does,
// so cached kits of an older recipe are not reused.
const layoutVersion = "guestkit-1"

// MetaPackage is the Debian package whose dependency names the current
// cloud kernel.
const MetaPackage = "linux-image-cloud-amd64"

// VirtioBlockModules are the modules a guest needs to see virtio-blk-pci
// disks on a Debian cloud kernel; their dependencies (virtio, virtio_ring,
// virtio_pci_modern_dev, virtio_pci_legacy_dev) are added by Build.
var VirtioBlockModules = []string{"virtio_pci", "virtio_blk"}

// Ext4Modules are what mounting ext4 needs. The cloud kernel builds ext4
// in, so Build usually finds nothing to add; they are listed so that a
// kernel that ships them as modules still works.
var Ext4Modules = []string{"crc16", "mbcache", "jbd2", "crc32c_generic", "ext4"}

// Options say what to build.
type Options struct {
	// CacheDir holds downloaded packages and built kits.
	CacheDir string
	// GuestPackage is the directory of the Go main package that becomes
	// /init. Every file under it counts as an input of the kit.
	GuestPackage string
	// Modules are the kernel modules to load at boot, by name; their
	// dependencies are added.
	Modules []string
	// KernelPackage is the versioned kernel package to use; "" resolves
	// it from MetaPackage.
	KernelPackage string
	// Logf, when set, is told about slow steps (download, build).
	Logf func(format string, args ...any)
}

// Kit is a built guest.
type Kit struct {
	Kernel        string   `json:"kernel"` // path of vmlinuz
	Initrd        string   `json:"initrd"` // path of the initramfs (newc cpio)
	KernelPackage string   `json:"kernel_package"`
	KernelVersion string   `json:"kernel_version"` // Debian package version
	Release       string   `json:"release"`        // uname -r of the kernel
	Modules       []string `json:"modules"`        // in load order
	Dir           string   `json:"-"`
}

// Build returns the kit for opts, building it when no cached kit matches.
func Build(ctx context.Context, opts Options) (*Kit, error) {
	if opts.CacheDir == "" || opts.GuestPackage == "" {
		return nil, errors.New("guestkit: CacheDir and GuestPackage are required")
	}
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("guestkit: %w", err)
	}
	unlock, err := lockDir(opts.CacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	pkg := opts.KernelPackage
	if pkg == "" {
		if pkg, err = resolveKernelPackage(ctx); err != nil {
			return nil, err
		}
	}
	version, err := packageVersion(ctx, pkg)
	if err != nil {
		return nil, err
	}
	key, err := inputHash(pkg, version, opts)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(opts.CacheDir, "kit-"+key[:16])
	if kit, err := readKit(dir); err == nil {
		return kit, nil
	}

	logf("guestkit: building %s (kernel %s %s)", dir, pkg, version)
	deb, err := download(ctx, opts.CacheDir, pkg, version, logf)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(opts.CacheDir, "build-")
	if err != nil {
		return nil, fmt.Errorf("guestkit: %w", err)
	}
	defer os.RemoveAll(tmp)
	kit, err := assemble(ctx, tmp, deb, opts)
	if err != nil {
		return nil, err
	}
	kit.KernelPackage, kit.KernelVersion = pkg, version
	out := filepath.Join(tmp, "kit")
	if err := writeKitJSON(out, kit); err != nil {
		return nil, err
	}
	os.RemoveAll(dir) // a partial kit of a crashed builder (no kit.json)
	if err := os.Rename(out, dir); err != nil {
		return nil, fmt.Errorf("guestkit: %w", err)
	}
	return readKit(dir)
}

// lockDir takes an exclusive flock on dir/.lock until unlock is called.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("guestkit: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("guestkit: lock %s: %w", f.Name(), err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

func run(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// resolveKernelPackage reads the versioned kernel package MetaPackage
// depends on.
func resolveKernelPackage(ctx context.Context) (string, error) {
	out, err := run(ctx, "", nil, "apt-cache", "depends", MetaPackage)
	if err != nil {
		return "", fmt.Errorf("guestkit: resolve kernel: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
			return dep, nil
		}
	}
	return "", fmt.Errorf("guestkit: apt-cache depends %s names no linux-image package:\n%s", MetaPackage, out)
}

func packageVersion(ctx context.Context, pkg string) (string, error) {
	out, err := run(ctx, "", nil, "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", fmt.Errorf("guestkit: version of %s: %w", pkg, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("guestkit: apt-cache show %s: no Version", pkg)
}

// inputHash names a kit by everything that goes into it.
func inputHash(pkg, version string, opts Options) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", layoutVersion, pkg, version, runtime.Version())
	mods := append([]string(nil), opts.Modules...)
	sort.Strings(mods)
	fmt.Fprintf(h, "modules %s\n", strings.Join(mods, ","))
	// The guest's sources, plus go.mod/go.sum of its module (dependency
	// versions change the binary too).
	var files []string
	err := filepath.WalkDir(opts.GuestPackage, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// Test files do not go into the binary.
		if d.Type().IsRegular() && !strings.HasSuffix(p, "_test.go") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("guestkit: guest sources: %w", err)
	}
	if root, err := moduleRoot(opts.GuestPackage); err == nil {
		files = append(files, filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum"))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("guestkit: %w", err)
		}
		rel, _ := filepath.Rel(opts.GuestPackage, f)
		fmt.Fprintf(h, "file %s %d\n", rel, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func moduleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

// download fetches pkg=version into cacheDir/deb (once).
func download(ctx context.Context, cacheDir, pkg, version string, logf func(string, ...any)) (string, error) {
	debDir := filepath.Join(cacheDir, "deb")
	if err := os.MkdirAll(debDir, 0o755); err != nil {
		return "", fmt.Errorf("guestkit: %w", err)
	}
	// Debian file names escape the epoch colon as %3a.
	want := filepath.Join(debDir, fmt.Sprintf("%s_%s_amd64.deb", pkg, strings.ReplaceAll(version, ":", "%3a")))
	if _, err := os.Stat(want); err == nil {
		return want, nil
	}
	tmp, err := os.MkdirTemp(debDir, "download-")
	if err != nil {
		return "", fmt.Errorf("guestkit: %w", err)
	}
	defer os.RemoveAll(tmp)
	logf("guestkit: apt-get download %s=%s", pkg, version)
	// As root, apt drops to the _apt user, which cannot write here.
	if _, err := run(ctx, tmp, nil, "apt-get", "-o", "APT::Sandbox::User=root", "download", pkg+"="+version); err != nil {
		return "", fmt.Errorf("guestkit: download kernel: %w", err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("guestkit: apt-get download %s left %d .deb files", pkg, len(debs))
	}
	if err := os.Rename(debs[0], want); err != nil {
		return "", fmt.Errorf("guestkit: %w", err)
	}
	return want, nil
}

// assemble unpacks the kernel package into work, builds the guest and
// writes work/kit/{vmlinuz,initramfs.cpio}.
func assemble(ctx context.Context, work, deb string, opts Options) (*Kit, error) {
	root := filepath.Join(work, "root")
	if _, err := run(ctx, "", nil, "dpkg-deb", "-x", deb, root); err != nil {
		return nil, fmt.Errorf("guestkit: unpack kernel: %w", err)
	}
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return nil, fmt.Errorf("guestkit: %s holds %d kernels (boot/vmlinuz-*)", deb, len(kernels))
	}
	release := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	modDir := filepath.Join(root, "lib", "modules", release)
	if _, err := os.Stat(modDir); err != nil {
		modDir = filepath.Join(root, "usr", "lib", "modules", release)
	}
	modules, err := resolveModules(modDir, opts.Modules)
	if err != nil {
		return nil, err
	}

	out := filepath.Join(work, "kit")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("guestkit: %w", err)
	}
	kernel := filepath.Join(out, "vmlinuz")
	if err := copyFile(kernels[0], kernel); err != nil {
		return nil, err
	}

	guest := filepath.Join(work, "init")
	env := []string{"CGO_ENABLED=0", "GOAMD64=v1", "GOOS=linux", "GOARCH=amd64"}
	if _, err := run(ctx, opts.GuestPackage, env, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", guest, "."); err != nil {
		return nil, fmt.Errorf("guestkit: build guest: %w", err)
	}
	initBin, err := os.ReadFile(guest)
	if err != nil {
		return nil, fmt.Errorf("guestkit: %w", err)
	}

	recs := []cpio.Record{
		cpio.Directory("dev", 0o755),
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.Directory("proc", 0o555),
		cpio.Directory("sys", 0o555),
		cpio.Directory("mnt", 0o755),
		cpio.Directory("tmp", 0o1777),
		cpio.Directory("lib", 0o755),
		cpio.Directory("lib/modules", 0o755),
		cpio.StaticRecord(initBin, cpio.Info{Name: "init", Mode: cpio.S_IFREG | 0o755}),
	}
	var names []string
	for _, m := range modules {
		recs = append(recs, cpio.StaticRecord(m.content, cpio.Info{Name: "lib/modules/" + m.name + ".ko", Mode: cpio.S_IFREG | 0o644}))
		names = append(names, m.name)
	}
	order := strings.Join(names, "\n")
	if order != "" {
		order += "\n"
	}
	recs = append(recs, cpio.StaticFile("lib/modules/load-order", order, 0o644))
	cpio.MakeAllReproducible(recs)

	initrd := filepath.Join(out, "initramfs.cpio")
	f, err := os.Create(initrd)
	if err != nil {
		return nil, fmt.Errorf("guestkit: %w", err)
	}
	w := cpio.Newc.Writer(f)
	if err := cpio.WriteRecords(w, recs); err != nil {
		f.Close()
		return nil, fmt.Errorf("guestkit: write initramfs: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		f.Close()
		return nil, fmt.Errorf("guestkit: write initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("guestkit: write initramfs: %w", err)
	}
	return &Kit{Kernel: kernel, Initrd: initrd, Release: release, Modules: names}, nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("guestkit: %w", err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		return fmt.Errorf("guestkit: %w", err)
	}
	return nil
}

// module is one kernel module to put into the initramfs.
type module struct {
	name    string
	content []byte // uncompressed ELF
	depends []string
}

// resolveModules finds the wanted modules and their dependencies under
// modDir and returns them dependencies first. Built-in modules are
// skipped; a module that is neither built in nor shipped is an error.
func resolveModules(modDir string, wanted []string) ([]module, error) {
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			builtin[moduleName(sc.Text())] = true
		}
	}
	files := map[string]string{} // name -> path
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n := d.Name(); strings.HasSuffix(n, ".ko") || strings.HasSuffix(n, ".ko.xz") {
			files[moduleName(n)] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("guestkit: modules: %w", err)
	}

	var order []module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, from string) error
	visit = func(name, from string) error {
		name = moduleName(name)
		switch {
		case state[name] == 2 || builtin[name]:
			return nil
		case state[name] == 1:
			return fmt.Errorf("guestkit: module dependency cycle at %s", name)
		}
		path, ok := files[name]
		if !ok {
			return fmt.Errorf("guestkit: module %s (wanted by %s) is neither built in nor in %s", name, from, modDir)
		}
		state[name] = 1
		m, err := loadModule(name, path)
		if err != nil {
			return err
		}
		for _, dep := range m.depends {
			if err := visit(dep, name); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, m)
		return nil
	}
	for _, w := range wanted {
		if err := visit(w, "the kit"); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName turns a path or file name into the kernel's module name
// (dashes and underscores are the same to modprobe; the kernel uses _).
func moduleName(p string) string {
	n := filepath.Base(strings.TrimSpace(p))
	n = strings.TrimSuffix(n, ".xz")
	n = strings.TrimSuffix(n, ".ko")
	return strings.ReplaceAll(n, "-", "_")
}

// loadModule reads a module, decompressing .ko.xz with xz, and its
// depends= from the .modinfo section.
func loadModule(name, path string) (module, error) {
	var content []byte
	var err error
	if strings.HasSuffix(path, ".xz") {
		content, err = run(context.Background(), "", nil, "xz", "-dc", path)
	} else {
		content, err = os.ReadFile(path)
	}
	if err != nil {
		return module{}, fmt.Errorf("guestkit: read module %s: %w", path, err)
	}
	f, err := elf.NewFile(bytes.NewReader(content))
	if err != nil {
		return module{}, fmt.Errorf("guestkit: module %s: %w", path, err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return module{}, fmt.Errorf("guestkit: module %s has no .modinfo", path)
	}
	info, err := sec.Data()
	if err != nil {
		return module{}, fmt.Errorf("guestkit: module %s .modinfo: %w", path, err)
	}
	m := module{name: name, content: content}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if deps, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(deps) > 0 {
			m.depends = append(m.depends, strings.Split(string(deps), ",")...)
		}
	}
	return m, nil
}

func writeKitJSON(dir string, kit *Kit) error {
	rel := *kit
	rel.Kernel, rel.Initrd = "vmlinuz", "initramfs.cpio"
	b, err := json.MarshalIndent(rel, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "kit.json"), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("guestkit: %w", err)
	}
	return nil
}

// readKit loads a complete kit directory.
func readKit(dir string) (*Kit, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kit.json"))
	if err != nil {
		return nil, err
	}
	var kit Kit
	if err := json.Unmarshal(b, &kit); err != nil {
		return nil, fmt.Errorf("guestkit: %s: %w", dir, err)
	}
	kit.Dir = dir
	kit.Kernel = filepath.Join(dir, kit.Kernel)
	kit.Initrd = filepath.Join(dir, kit.Initrd)
	for _, p := range []string{kit.Kernel, kit.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("guestkit: incomplete kit: %w", err)
		}
	}
	return &kit, nil
}
