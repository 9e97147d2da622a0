package datastore_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/hibdisk/hibdisk/datastore"
	"github.com/hibdisk/hibdisk/diffdisk"
	_ "github.com/hibdisk/hibdisk/internal/checkers"
	"github.com/hibdisk/hibdisk/internal/checktest"
)

const testSize = 1 << 20

// newBase creates a base layer in a test directory and returns its path.
// Every layer in that directory is checked when the test ends.
func newBase(t *testing.T) string {
	t.Helper()
	path := filepath.Join(checktest.TempDir(t), "base.hib")
	if err := diffdisk.Create(path, diffdisk.CreateOptions{Size: testSize}); err != nil {
		t.Fatal(err)
	}
	return path
}

// newDiff creates a diff layer over backing and returns its path.
func newDiff(t *testing.T, backing, name string) string {
	t.Helper()
	path := filepath.Join(filepath.Dir(backing), name)
	if err := diffdisk.Create(path, diffdisk.CreateOptions{Backing: backing}); err != nil {
		t.Fatal(err)
	}
	return path
}

// open opens the chain at path and its datastore, closed at cleanup
// unless closed before through the returned function.
func open(t *testing.T, path string, opts diffdisk.Options) (*datastore.Store, *diffdisk.Disk, func()) {
	t.Helper()
	return openWith(t, path, opts, nil)
}

// openWith is open with the chain's hibernate file made by hib (nil: the
// Store makes its own).
func openWith(t *testing.T, path string, opts diffdisk.Options, hib func(d *diffdisk.Disk) *diffdisk.Disk) (*datastore.Store, *diffdisk.Disk, func()) {
	t.Helper()
	d, err := diffdisk.Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	var o datastore.Options
	if hib != nil {
		o.Hibernate = hib(d)
	}
	s, err := datastore.Open(d, o)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	closed := false
	closeAll := func() {
		if closed {
			return
		}
		closed = true
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("close chain: %v", err)
		}
	}
	t.Cleanup(closeAll)
	return s, d, closeAll
}

func mustOpen(t *testing.T, path string) *datastore.Store {
	t.Helper()
	s, _, _ := open(t, path, diffdisk.Options{})
	return s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: error %v, want %v", what, err, want)
	}
}

// drain returns every change Check reports until it reports none.
func drain(t *testing.T, s *datastore.Store, owner string) []datastore.Change {
	t.Helper()
	var out []datastore.Change
	for range 1000 {
		c, ok, err := s.Check(owner)
		if err != nil {
			t.Fatalf("check %q: %v", owner, err)
		}
		if !ok {
			return out
		}
		out = append(out, c)
	}
	t.Fatal("check never ran dry")
	return nil
}
