// Package checktest checks, when a test ends, every layer file the test
// touched with the one consistency checker, diffdisk.Check (what
// `hibdisk check` runs), the way bbolt's tests check every database they
// used. The test binary must link the packages that register checks
// (internal/checkers); a layer table that no linked check covers fails
// the test.
package checktest

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Layer checks the layer at path when the test ends, and returns path.
// Register it before the t.Cleanup that closes the layer (cleanups run
// last-registered first). A path that holds no file by then is skipped
// (the test removed it, or never created it).
func Layer(t testing.TB, path string) string {
	t.Helper()
	t.Cleanup(func() {
		if _, err := os.Stat(path); err != nil {
			return
		}
		check(t, path)
	})
	return path
}

// Dir checks every hibdisk layer file directly in dir (recognised by its
// header) when the test ends, and returns dir.
func Dir(t testing.TB, dir string) string {
	t.Helper()
	t.Cleanup(func() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Errorf("checktest: list %s: %v", dir, err)
			return
		}
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			if !e.Type().IsRegular() {
				continue
			}
			if ok, err := sqlitelayer.IsLayer(path); err != nil || !ok {
				continue
			}
			check(t, path)
		}
	})
	return dir
}

// TempDir is t.TempDir() checked with Dir.
func TempDir(t testing.TB) string {
	t.Helper()
	return Dir(t, t.TempDir())
}

// Damaged marks the layer at path as deliberately damaged by the test:
// the cleanup check must then find a problem containing each of want
// (at least one problem if want is empty), and may find others.
func Damaged(t testing.TB, path string, want ...string) {
	damaged.Store(key(path), want)
}

var damaged sync.Map // cleaned path -> []string

func key(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return filepath.Clean(path)
}

func check(t testing.TB, path string) {
	t.Helper()
	r, err := diffdisk.Check(path)
	if err != nil {
		t.Errorf("check %s: %v", path, err)
		return
	}
	for _, n := range r.Notes {
		if strings.Contains(n, "tables not checked") {
			t.Errorf("check %s: %s (link internal/checkers into the test binary)", path, n)
		}
	}
	if want, ok := damaged.Load(key(path)); ok {
		if r.OK() {
			t.Errorf("check %s: no problem found in the deliberately damaged layer", path)
		}
		for _, w := range want.([]string) {
			if !strings.Contains(strings.Join(r.Problems, "\n"), w) {
				t.Errorf("check %s: no problem says %q:\n%s", path, w, r)
			}
		}
		return
	}
	if !r.OK() {
		t.Errorf("check %s found problems:\n%s", path, r)
	}
}
