package hibfile_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ncruces/go-sqlite3"

	"github.com/hibdisk/hibdisk/diffdisk"
	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/hibfile"
	_ "github.com/hibdisk/hibdisk/internal/checkers"
	"github.com/hibdisk/hibdisk/internal/checktest"
)

// checked registers path to be checked (the whole layer check, as
// `hibdisk check` runs it) when the test ends.
func checked(t testing.TB, path string) string {
	t.Helper()
	return checktest.Layer(t, path)
}

// newBase creates a base layer in dir.
func newBase(t testing.TB, dir, name string) string {
	t.Helper()
	path := checked(t, filepath.Join(dir, name))
	f, err := sqlitelayer.Create(path, sqlitelayer.CreateOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// newDiff creates a diff layer over backing in dir.
func newDiff(t testing.TB, dir, name, backing string) string {
	t.Helper()
	path := checked(t, filepath.Join(dir, name))
	if err := diffdisk.Create(path, diffdisk.CreateOptions{Backing: backing}); err != nil {
		t.Fatal(err)
	}
	return path
}

// synthetic builds a snapshot of n processes in a tree (each process's
// parent is an earlier one), each with maps mappings (the first stored
// ones of pages pages), files files and sigs signals, and an image with
// random content for every stored range.
func synthetic(seed uint64, n, maps, stored, pages, files, sigs int) (*hibfile.Snapshot, *hibfile.MemoryImage) {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := &hibfile.Snapshot{
		Timestamp:     time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		KernelVersion: "6.1.0-test",
		TotalMemoryKB: 512 << 10,
		Source:        "synthetic",
		Arch:          "x86_64",
	}
	for i := 0; i < n; i++ {
		pid := int64(100 + i)
		parent := int64(1)
		if i > 0 {
			parent = 100 + int64(rng.IntN(i))
		}
		p := hibfile.Process{
			PID: pid, ParentPID: parent, Name: fmt.Sprintf("proc%d", i), State: "sleeping",
			RegistersSize: 216, CwdPath: "/work", MemoryStart: 0x400000,
		}
		addr := int64(0x400000)
		for j := 0; j < maps; j++ {
			size := int64(4096)
			if j < stored {
				size = int64(pages) * 4096
			}
			p.Mappings = append(p.Mappings, hibfile.Mapping{
				VirtualAddr: addr, Size: size, PageSize: 4096, Permissions: "rw-p", Flags: "private,anonymous",
				Path: fmt.Sprintf("/lib/lib%d.so", j),
			})
			p.MemorySize += size
			addr += size + 4096
		}
		for fd := 0; fd < files; fd++ {
			p.Files = append(p.Files, hibfile.File{FD: int64(fd), Path: fmt.Sprintf("/tmp/f%d", fd), Position: int64(fd * 10), Flags: "O_RDWR"})
		}
		for sig := 1; sig <= sigs; sig++ {
			g := hibfile.Signal{Number: int64(sig), Disposition: hibfile.DispositionDefault}
			if sig%3 == 0 {
				g.Disposition, g.HandlerAddress, g.Flags = hibfile.DispositionHandler, ptr(int64(0x401000+sig)), "SA_RESTART"
			}
			p.Signals = append(p.Signals, g)
		}
		s.Processes = append(s.Processes, p)
	}
	hibfile.Layout(s, nil, 4096, func(_ int64, m hibfile.Mapping) bool { return m.Size > 4096 })
	img := &hibfile.MemoryImage{}
	for _, p := range s.Processes {
		regs := make([]byte, p.RegistersSize)
		fillRandom(rng, regs)
		img.Put(*p.RegistersOffset, regs)
		for _, m := range p.Mappings {
			if m.BlobOffset != nil {
				data := make([]byte, m.Size)
				fillRandom(rng, data)
				img.Put(*m.BlobOffset, data)
			}
		}
	}
	return s, img
}

func fillRandom(rng *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
}

func ptr[T any](v T) *T { return &v }

// latestView opens the hibernate file of the layer at path and returns
// its newest snapshot; the file is closed when the test ends.
func latestView(t testing.TB, path string) *hibfile.View {
	t.Helper()
	c, err := hibfile.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	v, err := c.Latest()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustSave(t testing.TB, path string, s *hibfile.Snapshot, img *hibfile.MemoryImage) hibfile.SaveResult {
	t.Helper()
	res, err := hibfile.Save(path, s, img)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func openSQL(t testing.TB, path string) *sqlite3.Conn {
	t.Helper()
	conn, err := sqlite3.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	var n int64
	for _, p := range []string{path, path + "-wal"} {
		if st, err := os.Stat(p); err == nil {
			n += st.Size()
		}
	}
	return n
}
