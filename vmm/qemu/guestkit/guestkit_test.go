package guestkit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/block/virtio_blk.ko":             "virtio_blk",
		"kernel/drivers/char/hw_random/virtio-rng.ko.xz": "virtio_rng",
		"ext4":                       "ext4",
		"  kernel/fs/ext4/ext4.ko\n": "ext4",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestInputHash: a kit is rebuilt exactly when an input changes.
func TestInputHash(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := Options{GuestPackage: dir, Modules: []string{"virtio_pci", "virtio_blk"}}
	hash := func(pkg, version string, o Options) string {
		t.Helper()
		h, err := inputHash(pkg, version, o)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	base := hash("linux-image-x", "1", opts)
	if again := hash("linux-image-x", "1", opts); again != base {
		t.Error("hash is not stable")
	}
	reordered := opts
	reordered.Modules = []string{"virtio_blk", "virtio_pci"}
	if hash("linux-image-x", "1", reordered) != base {
		t.Error("module order changed the hash (the load order is derived, not given)")
	}
	more := opts
	more.Modules = append([]string{"ext4"}, opts.Modules...)
	for name, h := range map[string]string{
		"kernel package": hash("linux-image-y", "1", opts),
		"kernel version": hash("linux-image-x", "2", opts),
		"module list":    hash("linux-image-x", "1", more),
	} {
		if h == base {
			t.Errorf("changing the %s kept the hash", name)
		}
	}
	if err := os.WriteFile(src, []byte("package main // changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if hash("linux-image-x", "1", opts) == base {
		t.Error("changing the guest's source kept the hash")
	}
}
