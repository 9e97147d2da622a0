package sqlitelayer_test

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
)

// Layer benchmarks. Each runs on one layer of -bench.size bytes with 4 KiB
// sectors, pre-filled with random data (built once per page size per test
// binary run, in -bench.dir). Compare page sizes with
// -bench.pagesizes=4096,16384,32768,65536.
//
//	go test ./disklayer/sqlitelayer -run '^$' -bench Layer -benchtime 3s
//
// What is measured:
//   - read4k-random: ReadAt of one random aligned 4 KiB sector.
//   - read4k-random-parallel: the same from GOMAXPROCS goroutines.
//   - write4k-random: WriteAt of one random aligned sector of fresh random
//     data, with a Flush (synced commit) every 1024 writes (4 MiB).
//   - read1m-seq / write1m-seq: 1 MiB requests walking the disk in order
//     and wrapping; writes Flush every 64 MiB and at the end, so every
//     byte counted was committed with a synced WAL.
//   - write4k-random-fresh / write1m-seq-fresh: the same writes into a
//     new, empty layer (a fresh diff layer's case): every write until the
//     disk is full allocates pages, which the writes over the filled
//     fixture do not. -bench.novacuum makes every layer without
//     auto_vacuum=INCREMENTAL, to compare its cost (the pointer-map pages
//     it keeps up to date on every allocation).
//
// Writes also report cpu-us/op: the process's CPU time per write, which
// other jobs on a shared machine disturb less than the wall time.
var (
	benchDir       = flag.String("bench.dir", "", "directory for benchmark layers (default: a temporary directory under $TMPDIR)")
	benchSize      = flag.Int64("bench.size", 256<<20, "size of the benchmark layer in bytes")
	benchPageSizes = flag.String("bench.pagesizes", "", "comma-separated SQLite page sizes to compare (default: the one Create picks)")
	benchNoVacuum  = flag.Bool("bench.novacuum", false, "make the benchmark layers with auto_vacuum=NONE, as before live reclaim (compare the write path's cost)")
)

func benchPageSizeList(b *testing.B) []int {
	if *benchPageSizes == "" {
		return []int{0}
	}
	var list []int
	for _, s := range strings.Split(*benchPageSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			b.Fatalf("-bench.pagesizes: %v", err)
		}
		list = append(list, n)
	}
	return list
}

func pageSizeName(n int) string {
	if n == 0 {
		return "page=default"
	}
	return fmt.Sprintf("page=%d", n)
}

// benchFixtures holds one pre-filled layer per page size for the life of
// the test binary.
var benchFixtures struct {
	sync.Mutex
	dir   string
	paths map[int]string
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, p := range benchFixtures.paths {
		for _, suffix := range []string{"", "-wal", "-shm"} {
			os.Remove(p + suffix)
		}
	}
	if benchFixtures.dir != "" && *benchDir == "" {
		os.RemoveAll(benchFixtures.dir)
	}
	os.Exit(code)
}

// benchLayer returns the path of a pre-filled layer with the given page
// size, creating it on first use.
func benchLayer(b *testing.B, pageSize int) string {
	benchFixtures.Lock()
	defer benchFixtures.Unlock()
	if benchFixtures.paths == nil {
		dir := *benchDir
		if dir == "" {
			var err error
			if dir, err = os.MkdirTemp("", "hibdisk-bench-"); err != nil {
				b.Fatal(err)
			}
		}
		benchFixtures.dir = dir
		benchFixtures.paths = map[int]string{}
	}
	if p, ok := benchFixtures.paths[pageSize]; ok {
		return p
	}
	path := filepath.Join(benchFixtures.dir, fmt.Sprintf("bench-%d-%d.hibdisk", pageSize, os.Getpid()))
	os.Remove(path)
	defer sqlitelayer.SetPageSizeForTest(pageSize)()
	defer sqlitelayer.SetIncrementalForTest(!*benchNoVacuum)()
	createFilled(b, path, sqlitelayer.CreateOptions{Size: *benchSize}, 1)
	benchFixtures.paths[pageSize] = path
	return path
}

// createFilled creates a layer at path and fills every sector with random
// data drawn from seed.
func createFilled(b *testing.B, path string, opts sqlitelayer.CreateOptions, seed uint64) {
	f, err := sqlitelayer.Create(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, seed+1))
	buf := make([]byte, 1<<20)
	for off := int64(0); off < opts.Size; off += int64(len(buf)) {
		randomFill(rng, buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// writeSeq writes buf b.N times walking the layer in order and wrapping,
// with a Flush every flushEvery writes and at the end; change, if not nil,
// alters buf before write i.
func writeSeq(b *testing.B, f *sqlitelayer.File, buf []byte, flushEvery int, change func(i int)) {
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	cpu := startCPU()
	off := int64(0)
	for i := range b.N {
		if change != nil {
			change(i)
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(buf))) % *benchSize
		if i%flushEvery == flushEvery-1 {
			if err := f.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := f.Flush(); err != nil {
		b.Fatal(err)
	}
	cpu.report(b)
}

// cpuTimer measures the process's CPU time (user and system, on every
// goroutine: the checkpointer's too) over a benchmark's timed part: on a
// machine shared with other jobs it varies less than the wall time.
type cpuTimer struct{ start time.Duration }

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuTimer { return cpuTimer{processCPU()} }

// report adds the CPU time per operation as the cpu-us/op metric.
func (c cpuTimer) report(b *testing.B) {
	b.ReportMetric(float64((processCPU()-c.start).Microseconds())/float64(b.N), "cpu-us/op")
}

func randomFill(rng *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := rng.Uint64() | 1 // never an all-zero sector
		for j := range 8 {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

// createBench creates an empty layer of size bytes with the given page
// size, closed when the benchmark ends.
func createBench(b *testing.B, pageSize int, size int64) *sqlitelayer.File {
	defer sqlitelayer.SetPageSizeForTest(pageSize)()
	defer sqlitelayer.SetIncrementalForTest(!*benchNoVacuum)()
	f, err := sqlitelayer.Create(filepath.Join(b.TempDir(), "fresh.hibdisk"), sqlitelayer.CreateOptions{Size: size})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	})
	return f
}

func openBench(b *testing.B, path string, opts sqlitelayer.OpenOptions) *sqlitelayer.File {
	f, err := sqlitelayer.Open(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	})
	return f
}

func BenchmarkLayer(b *testing.B) {
	for _, ps := range benchPageSizeList(b) {
		b.Run(pageSizeName(ps), func(b *testing.B) {
			path := benchLayer(b, ps)
			sectors := *benchSize / 4096
			b.Run("read4k-random", func(b *testing.B) {
				f := openBench(b, path, sqlitelayer.OpenOptions{})
				rng := rand.New(rand.NewPCG(3, 4))
				buf := make([]byte, 4096)
				b.SetBytes(4096)
				b.ResetTimer()
				for range b.N {
					if _, err := f.ReadAt(buf, rng.Int64N(sectors)*4096); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			})
			b.Run("read4k-random-parallel", func(b *testing.B) {
				f := openBench(b, path, sqlitelayer.OpenOptions{})
				b.SetBytes(4096)
				var seed sync.Mutex
				var next uint64
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					seed.Lock()
					next++
					rng := rand.New(rand.NewPCG(next, 5))
					seed.Unlock()
					buf := make([]byte, 4096)
					for pb.Next() {
						if _, err := f.ReadAt(buf, rng.Int64N(sectors)*4096); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			})
			b.Run("write4k-random", func(b *testing.B) {
				f := openBench(b, path, sqlitelayer.OpenOptions{})
				rng := rand.New(rand.NewPCG(6, 7))
				buf := make([]byte, 4096)
				b.SetBytes(4096)
				b.ResetTimer()
				cpu := startCPU()
				for i := range b.N {
					randomFill(rng, buf)
					if _, err := f.WriteAt(buf, rng.Int64N(sectors)*4096); err != nil {
						b.Fatal(err)
					}
					if i%1024 == 1023 {
						if err := f.Flush(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := f.Flush(); err != nil {
					b.Fatal(err)
				}
				cpu.report(b)
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			})
			b.Run("read1m-seq", func(b *testing.B) {
				f := openBench(b, path, sqlitelayer.OpenOptions{})
				buf := make([]byte, 1<<20)
				b.SetBytes(int64(len(buf)))
				b.ResetTimer()
				off := int64(0)
				for range b.N {
					if _, err := f.ReadAt(buf, off); err != nil {
						b.Fatal(err)
					}
					off = (off + int64(len(buf))) % *benchSize
				}
				// The freshly filled fixture's size (no WAL after Close).
				if st, err := os.Stat(path); err == nil {
					b.ReportMetric(float64(st.Size())/float64(sectors), "file-bytes/sector")
				}
			})
			b.Run("write1m-seq", func(b *testing.B) {
				f := openBench(b, path, sqlitelayer.OpenOptions{})
				rng := rand.New(rand.NewPCG(8, 9))
				buf := make([]byte, 1<<20)
				randomFill(rng, buf)
				// Fresh content without the cost of regenerating it.
				writeSeq(b, f, buf, 64, func(i int) { buf[i%len(buf)]++ })
			})
			b.Run("write4k-random-fresh", func(b *testing.B) {
				f := createBench(b, ps, *benchSize)
				rng := rand.New(rand.NewPCG(6, 7))
				buf := make([]byte, 4096)
				b.SetBytes(4096)
				b.ResetTimer()
				cpu := startCPU()
				for i := range b.N {
					randomFill(rng, buf)
					if _, err := f.WriteAt(buf, rng.Int64N(sectors)*4096); err != nil {
						b.Fatal(err)
					}
					if i%1024 == 1023 {
						if err := f.Flush(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := f.Flush(); err != nil {
					b.Fatal(err)
				}
				cpu.report(b)
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
			})
			b.Run("write1m-seq-fresh", func(b *testing.B) {
				// A disk large enough that the writes never wrap onto
				// rows they wrote.
				f := createBench(b, ps, 1<<40)
				rng := rand.New(rand.NewPCG(8, 9))
				buf := make([]byte, 1<<20)
				randomFill(rng, buf)
				b.SetBytes(int64(len(buf)))
				b.ResetTimer()
				cpu := startCPU()
				for i := range b.N {
					buf[i%len(buf)]++
					if _, err := f.WriteAt(buf, int64(i)*int64(len(buf))); err != nil {
						b.Fatal(err)
					}
					if i%64 == 63 {
						if err := f.Flush(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := f.Flush(); err != nil {
					b.Fatal(err)
				}
				cpu.report(b)
			})
		})
	}
}

// BenchmarkZeroWrites measures 64 KiB writes of zeros walking a diff
// layer (zeros become tombstones), as qemu-img bench -w sends by default:
// the first pass turns data rows into tombstones, later passes rewrite
// tombstones. Flush every 64 MiB, as write1m-seq.
func BenchmarkZeroWrites(b *testing.B) {
	defer sqlitelayer.SetIncrementalForTest(!*benchNoVacuum)()
	for _, wb := range []bool{false, true} {
		b.Run(fmt.Sprintf("writeback=%v", wb), func(b *testing.B) {
			dir := b.TempDir()
			path := filepath.Join(dir, "diff.hibdisk")
			createFilled(b, path, sqlitelayer.CreateOptions{Size: *benchSize, Parent: rawParent(b, dir, *benchSize)}, 10)
			f := openBench(b, path, sqlitelayer.OpenOptions{WriteBack: wb})
			writeSeq(b, f, make([]byte, 64<<10), 1024, nil)
		})
	}
}
