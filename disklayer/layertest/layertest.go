// Package layertest is the conformance suite that every disklayer.Disk
// implementation runs: memlayer, rawlayer, the SQLite layer and diffdisk
// stacks. It checks an implementation byte for byte against memlayer, the
// in-memory model of the row semantics in package disklayer.
//
// Use it from a test file of the implementation:
//
//	func TestConformance(t *testing.T) { layertest.Run(t, factory) }
//	func FuzzOps(f *testing.F)          { layertest.FuzzOps(f, factory) }
//
// Randomized subtests print their seed when they fail; replay one with
// -layertest.seed=N after the package (and -run to pick the subtest).
package layertest

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
)

var seedFlag = flag.Uint64("layertest.seed", 0, "seed for the randomized layertest subtests (0: a fresh random seed per subtest)")

// Factory describes the implementation under test.
type Factory struct {
	// New makes an empty writable disk of size bytes with the given sector
	// size. With hasParent the disk must behave as a layer that has
	// something below it: sectors that become all zero are tombstones
	// (Zero extents) rather than no row (Absent). New is called with
	// hasParent true only when WithParent is set. The suite closes every
	// disk it gets, directly or through Reopen.
	New func(t *testing.T, size int64, sectorSize int, hasParent bool) disklayer.Disk
	// Reopen closes d (Close must flush) and opens the same storage again.
	// nil when the implementation has no persistence.
	Reopen func(t *testing.T, d disklayer.Disk) disklayer.Disk
	// SectorSizes lists the sector sizes New supports.
	SectorSizes []int
	// WithParent says New supports hasParent true; the suite then runs
	// every subtest both without and with a parent.
	WithParent bool
	// ExtentsExact says Extents distinguishes Absent, Zero and Data
	// exactly like the row model, so the suite compares extents with
	// memlayer's. Without it (a raw file cannot tell a hole from written
	// zeros) the suite only checks that extents are well formed and agree
	// with ReadAt: Absent and Zero ranges read as zeros.
	ExtentsExact bool
}

// config is one combination of the factory's parameters.
type config struct {
	sectorSize int
	hasParent  bool
}

func (c config) String() string {
	if c.hasParent {
		return fmt.Sprintf("%d+parent", c.sectorSize)
	}
	return fmt.Sprint(c.sectorSize)
}

func (f Factory) configs() []config {
	var list []config
	for _, ss := range f.SectorSizes {
		list = append(list, config{sectorSize: ss})
		if f.WithParent {
			list = append(list, config{sectorSize: ss, hasParent: true})
		}
	}
	return list
}

// eachConfig runs test once per configuration, as subtests.
func (f Factory) eachConfig(t *testing.T, test func(t *testing.T, c config)) {
	for _, c := range f.configs() {
		t.Run(c.String(), func(t *testing.T) { test(t, c) })
	}
}

// Run runs the conformance suite against the implementation f describes.
func Run(t *testing.T, f Factory) {
	if f.New == nil || len(f.SectorSizes) == 0 {
		t.Fatal("layertest.Factory needs New and at least one sector size")
	}
	for _, ss := range f.SectorSizes {
		if !disklayer.ValidSectorSize(ss) {
			t.Fatalf("layertest.Factory lists invalid sector size %d", ss)
		}
	}
	t.Run("Geometry", f.testGeometry)
	t.Run("RandomOps", f.testRandomOps)
	t.Run("Boundaries", f.testBoundaries)
	t.Run("RowRule", f.testRowRule)
	t.Run("Extents", f.testExtents)
	t.Run("Reopen", f.testReopen)
	t.Run("OwnReader", f.testOwnReader)
	t.Run("ReadCacher", f.testReadCacher)
	t.Run("Concurrency", f.testConcurrency)
	t.Run("Closed", f.testClosed)
}

// seed returns the seed for a randomized subtest and arranges for it to
// be printed if the subtest fails.
func seed(t *testing.T) uint64 {
	s := *seedFlag
	if s == 0 {
		s = rand.Uint64()
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d; replay with: go test -run '^%s$' <package> -layertest.seed=%d", s, regexpPath(t.Name()), s)
		}
	})
	return s
}

// regexpPath turns a test name into a -run pattern matching only it.
func regexpPath(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = strings.NewReplacer("+", `\+`, ".", `\.`).Replace(p)
	}
	return strings.Join(parts, "$/^")
}

// collectExtents gathers d.Extents(off, length). An error must come
// alone: it ends the sequence, so nothing may follow it.
func collectExtents(l disklayer.Layer, off, length int64) ([]disklayer.Extent, error) {
	var list []disklayer.Extent
	var failure error
	for e, err := range l.Extents(off, length) {
		if failure != nil {
			return list, fmt.Errorf("Extents(%d, %d) yielded %v after the error %v", off, length, e, failure)
		}
		if err != nil {
			failure = err
			continue
		}
		list = append(list, e)
	}
	return list, failure
}

// checkExtentShape verifies the structural promises of Extents: the list
// covers [off, off+length) in order without gaps or overlaps, every extent
// is non-empty with a known kind, neighbours differ in kind (merged), and
// inner boundaries are sector aligned.
func checkExtentShape(list []disklayer.Extent, off, length int64, sectorSize int) error {
	pos := off
	for i, e := range list {
		switch {
		case e.Off != pos:
			return fmt.Errorf("extent %d %v starts at %d, want %d (gap or overlap) in %v", i, e, e.Off, pos, list)
		case e.Len <= 0:
			return fmt.Errorf("extent %d %v is empty in %v", i, e, list)
		case e.Kind > disklayer.Data:
			return fmt.Errorf("extent %d has unknown kind %v in %v", i, e.Kind, list)
		case i > 0 && list[i-1].Kind == e.Kind:
			return fmt.Errorf("extents %d and %d are both %v, not merged, in %v", i-1, i, e.Kind, list)
		case i > 0 && e.Off%int64(sectorSize) != 0:
			return fmt.Errorf("inner extent boundary %d is not aligned to %d-byte sectors in %v", e.Off, sectorSize, list)
		}
		pos = e.End()
	}
	if pos != off+length {
		return fmt.Errorf("extents of [%d, %d) end at %d: %v", off, off+length, pos, list)
	}
	return nil
}

// checkExtentsAgree verifies that content, the bytes of [off, ...) as
// ReadAt returned them, is zero wherever list says Absent or Zero.
func checkExtentsAgree(list []disklayer.Extent, content []byte, off int64) error {
	for _, e := range list {
		if e.Kind == disklayer.Data {
			continue
		}
		part := content[e.Off-off : e.End()-off]
		if i := firstNonZero(part); i >= 0 {
			return fmt.Errorf("extent %v reads byte %#x at %d, want zeros", e, part[i], e.Off+int64(i))
		}
	}
	return nil
}

// firstDiff describes where got and want differ, or returns "".
func firstDiff(got, want []byte, base int64) string {
	if len(got) != len(want) {
		return fmt.Sprintf("length %d, want %d", len(got), len(want))
	}
	if bytes.Equal(got, want) {
		return ""
	}
	for i := range got {
		if got[i] != want[i] {
			j := i
			for j < len(got) && got[j] != want[j] {
				j++
			}
			return fmt.Sprintf("byte %d (first of %d differing) is %#x, want %#x", base+int64(i), j-i, got[i], want[i])
		}
	}
	return ""
}

var zeros [64 << 10]byte

// firstNonZero returns the index of the first non-zero byte of p, or -1.
func firstNonZero(p []byte) int {
	for done := 0; done < len(p); done += len(zeros) {
		chunk := p[done:min(len(p), done+len(zeros))]
		if !bytes.Equal(chunk, zeros[:len(chunk)]) {
			return done + slices.IndexFunc(chunk, func(b byte) bool { return b != 0 })
		}
	}
	return -1
}
