package qemu

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/hibfile"
)

// TestRAMDigestForms: every way a RAM digest is computed agrees, in both
// forms: hibernate's ("pages:", from the file), a resume's (runs of
// pages through ramWriter into a new file) and verifyRAM's (chunks); the
// plain form of older snapshots is what it always was. A resumed
// machine's hibernate, which reuses the sums of the pages its index
// says are unchanged, gives the digest of a fresh computation, and a
// change to any page, or a page moved, changes the digest.
func TestRAMDigestForms(t *testing.T) {
	const size = 256 * pageSize
	pages := map[int64]byte{0: 1, 5 * pageSize: 2, 6 * pageSize: 3, 100 * pageSize: 4, 255 * pageSize: 5}
	path := sparseRAM(t, size, pages, 10*pageSize)
	ram, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pagesForm, err := hibernateDigest(path, size, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(pagesForm, pageDigestPrefix) || !validDigest(pagesForm) {
		t.Fatalf("hibernate's digest %q is not in the pages form", pagesForm)
	}
	stream := newStreamDigest()
	stream.add(ram, 0)
	plainForm := stream.hex()
	if !validDigest(plainForm) || validDigest("pages:xyz") || validDigest(plainForm[:10]) {
		t.Error("validDigest does not tell digests from other strings")
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, want := range []string{pagesForm, plainForm} {
		// A resume: ascending runs of the data pages into a new file.
		out, err := os.Create(filepath.Join(t.TempDir(), "rebuilt"))
		if err != nil {
			t.Fatal(err)
		}
		out.Truncate(size)
		w := newRAMWriter(out, size, want)
		for off := int64(0); off < size; off += pageSize {
			if page := ram[off : off+pageSize]; !isZeroPage(page) {
				if err := w.write(page, off); err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, _, err := w.close(); err != nil {
			t.Fatal(err)
		}
		out.Close()
		if got := w.verifier.digest(); got != want {
			t.Errorf("ramWriter computes %s, want %s", got, want)
		}
		if got, _, err := digestRAM(f, size, want, nil); err != nil || got != want {
			t.Errorf("digestRAM computes %s, %v; want %s", got, err, want)
		}
		rebuilt, err := os.ReadFile(out.Name())
		if err != nil || !bytes.Equal(rebuilt, ram) {
			t.Errorf("ramWriter's file differs from the RAM (%v)", err)
		}
	}

	// A resumed machine: sums and index of the RAM as it was, then one
	// page changes, one data page becomes zero and one zero page data.
	_, was, err := digestRAM(f, size, pagesForm, nil)
	if err != nil {
		t.Fatal(err)
	}
	index := newIndexOf(t, ram, size)
	changed := sparseRAM(t, size, map[int64]byte{0: 1, 5 * pageSize: 9, 7 * pageSize: 3, 100 * pageSize: 4, 255 * pageSize: 5}, 10*pageSize)
	fresh, err := hibernateDigest(changed, size, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	incremental, err := hibernateDigest(changed, size, was, index)
	if err != nil {
		t.Fatal(err)
	}
	if incremental != fresh {
		t.Errorf("hibernate of a resumed machine computes %s, a fresh computation %s", incremental, fresh)
	}
	if fresh == pagesForm {
		t.Error("changing pages does not change the digest")
	}
	moved := sparseRAM(t, size, map[int64]byte{0: 1, 5 * pageSize: 2, 7 * pageSize: 3, 100 * pageSize: 4, 255 * pageSize: 5}, 10*pageSize)
	if got, _ := hibernateDigest(moved, size, nil, nil); got == pagesForm {
		t.Error("moving a page does not change the digest")
	}
}

// newIndexOf is the page index of ram, as a resume builds it.
func newIndexOf(t *testing.T, ram []byte, size int64) *hibfile.PageIndex {
	t.Helper()
	index := hibfile.NewPageIndex(size, pageSize)
	index.Add(ram, 0)
	return index
}
