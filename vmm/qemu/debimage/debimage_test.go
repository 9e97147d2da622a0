package debimage

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func writeOverlay(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc", "systemd", "system"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "systemd", "system", "x.service"), []byte("[Service]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("run.sh", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestInputHashCoversEveryInput(t *testing.T) {
	overlay := writeOverlay(t)
	base := Options{CacheDir: "/unused", Suite: "bookworm", Packages: []string{"systemd-sysv"}, Overlay: overlay, Size: 2 << 30}
	hash := func(o Options) string {
		t.Helper()
		h, err := inputHash(o)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	want := hash(base)
	if again := hash(base); again != want {
		t.Fatalf("hash not stable: %s then %s", want, again)
	}
	other := base
	other.CacheDir = "/elsewhere"
	other.Logf = t.Logf
	if hash(other) != want {
		t.Errorf("the cache directory or the logger changed the key")
	}
	changes := map[string]func(o *Options){
		"suite":    func(o *Options) { o.Suite = "trixie" },
		"packages": func(o *Options) { o.Packages = append(o.Packages, "udev") },
		"size":     func(o *Options) { o.Size = 1 << 30 },
		"content": func(o *Options) {
			os.WriteFile(filepath.Join(o.Overlay, "run.sh"), []byte("#!/bin/sh\nexit 1\n"), 0o755)
		},
		"mode": func(o *Options) { os.Chmod(filepath.Join(o.Overlay, "etc", "systemd", "system", "x.service"), 0o600) },
		"symlink": func(o *Options) {
			os.Remove(filepath.Join(o.Overlay, "link"))
			os.Symlink("etc", filepath.Join(o.Overlay, "link"))
		},
		"new file": func(o *Options) { os.WriteFile(filepath.Join(o.Overlay, "new"), nil, 0o644) },
	}
	for name, change := range changes {
		o := base
		o.Packages = append([]string(nil), base.Packages...)
		o.Overlay = writeOverlay(t)
		change(&o)
		if hash(o) == want {
			t.Errorf("changing the %s did not change the key", name)
		}
	}
}

func TestCopyTreeKeepsModesAndLinks(t *testing.T) {
	overlay := writeOverlay(t)
	root := t.TempDir()
	// A symlink in the root where the overlay has a file is replaced, not
	// written through.
	if err := os.Symlink("/dev/null", filepath.Join(root, "run.sh")); err != nil {
		t.Fatal(err)
	}
	if err := copyTree(overlay, root); err != nil {
		t.Fatal(err)
	}
	info, err := os.Lstat(filepath.Join(root, "run.sh"))
	if err != nil || !info.Mode().IsRegular() || info.Mode().Perm() != 0o755 {
		t.Errorf("run.sh: %v %v, want a regular file, mode 0755", info.Mode(), err)
	}
	if target, err := os.Readlink(filepath.Join(root, "link")); err != nil || target != "run.sh" {
		t.Errorf("link -> %q (%v), want run.sh", target, err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc", "systemd", "system", "x.service")); err != nil || string(b) != "[Service]\n" {
		t.Errorf("x.service: %q %v", b, err)
	}
}

func TestRemoveUnmountedLeavesMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := filepath.Join(t.TempDir(), "build-1")
	proc := filepath.Join(dir, "root", "proc")
	if err := os.MkdirAll(proc, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", proc).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", proc).Run()
		}
	})
	if err := os.WriteFile(filepath.Join(proc, "keep"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeUnmounted(dir); err == nil {
		t.Fatal("removeUnmounted removed a directory with a mount below it")
	}
	if _, err := os.Stat(filepath.Join(proc, "keep")); err != nil {
		t.Fatalf("a file on the mount is gone: %v", err)
	}
	if out, err := exec.Command("umount", proc).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	mounted = false
	if err := removeUnmounted(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", dir, err)
	}
}
