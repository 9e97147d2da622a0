package sqlitelayer_test

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer/sqlitelayer"
	"github.com/hibdisk/hibdisk/remote/chunks"
)

// fsBlock is the ext4 block size of the measured image.
const fsBlock = 4096

// guestRead is the largest read a guest's page cache issues (Linux's
// default read_ahead_kb).
const guestRead = 128 << 10

// BenchmarkChunkSizes measures what a lazy remote base fetches for what
// a guest reads, for each chunk size: a sealed layer of a real ext4
// image (HIBDISK_CHUNKS_LAYER) read through OpenReaderAt over a
// chunks.Reader of the file (an empty cache, default read-ahead), with reads
// a guest would make of the image's files, whose blocks
// HIBDISK_CHUNKS_FILES lists (debugfs "blocks" output). A fresh Reader
// per pattern, so each starts cold. scripts/measure-chunks.sh makes both
// and runs it; docs/remote-work.md has the results.
//
// Patterns: big (the 4 largest files, read whole in order in reads of
// up to 128 KiB), seq (40 files of 64 KiB or more, each read whole in order in
// reads of up to 128 KiB), small (300 files under 64 KiB, read whole),
// dirs (every file of 8 directories of 10 files or more, in directory
// order: a program and its libraries, a package), rand (2000 random
// 4 KiB blocks of files), all (the five in turn, one Reader).
// HIBDISK_CHUNKS_READAHEAD sets Options.ReadAheadBytes (-1: none).
func BenchmarkChunkSizes(b *testing.B) {
	layer, list := os.Getenv("HIBDISK_CHUNKS_LAYER"), os.Getenv("HIBDISK_CHUNKS_FILES")
	if layer == "" || list == "" {
		b.Skip("set HIBDISK_CHUNKS_LAYER and HIBDISK_CHUNKS_FILES; scripts/measure-chunks.sh makes them and runs this")
	}
	files := readBlockLists(b, list)
	plans := guestPlans(files)
	for _, cs := range []int64{64 << 10, 256 << 10, 1 << 20, 4 << 20} {
		blob := describeBlob(b, layer, cs)
		for _, name := range []string{"big", "seq", "small", "dirs", "rand", "all"} {
			b.Run(fmt.Sprintf("chunk=%dK/%s", cs>>10, name), func(b *testing.B) {
				for range b.N {
					read, st := measure(b, layer, blob, plans[name])
					b.ReportMetric(float64(st.FetchedBytes)/float64(read), "fetched/read")
					b.ReportMetric(float64(read)/(1<<20), "read-MiB")
					b.ReportMetric(float64(st.FetchedBytes)/(1<<20), "fetched-MiB")
					b.ReportMetric(float64(st.FetchedChunks), "GETs")
				}
			})
		}
	}
	// By pages (a manifest with page digests): the page digests' own
	// fetches (16 KiB chunks, as push writes them) are counted.
	digests := pageDigestsFile(b, layer)
	for _, name := range []string{"big", "seq", "small", "dirs", "rand", "all"} {
		b.Run("pages/"+name, func(b *testing.B) {
			for range b.N {
				read, st := measurePages(b, layer, digests, plans[name])
				b.ReportMetric(float64(st.FetchedBytes)/float64(read), "fetched/read")
				b.ReportMetric(float64(read)/(1<<20), "read-MiB")
				b.ReportMetric(float64(st.FetchedBytes)/(1<<20), "fetched-MiB")
				b.ReportMetric(float64(st.FetchedChunks), "GETs")
			}
		})
	}
}

// pageSize is the measured layer's SQLite page size.
const pageSize = 4096

// pageDigestsFile writes the page digests of the layer at path to a
// file, as push does, and returns that file.
func pageDigestsFile(b *testing.B, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var out []byte
	for off := 0; off < len(data); off += pageSize {
		sum := sha256.Sum256(data[off:min(off+pageSize, len(data))])
		out = append(out, sum[:]...)
	}
	p := filepath.Join(b.TempDir(), "pages")
	if err := os.WriteFile(p, out, 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// measurePages is measure over a cold chunks.PageReader, whose page
// digests come from a chunks.Reader of the digests file.
func measurePages(b *testing.B, path, digests string, reads [][2]int64) (int64, chunks.Stats) {
	fs, err := chunks.OpenFileSource(path)
	if err != nil {
		b.Fatal(err)
	}
	defer fs.Close()
	dfs, err := chunks.OpenFileSource(digests)
	if err != nil {
		b.Fatal(err)
	}
	defer dfs.Close()
	cache, err := chunks.OpenCache(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	dblob := describeBlob(b, digests, 16<<10)
	dr, err := chunks.NewReader(dblob, dfs, chunks.Options{Cache: cache, ReadAheadBytes: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer dr.Close()
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	ra, _ := strconv.ParseInt(os.Getenv("HIBDISK_CHUNKS_READAHEAD"), 10, 64)
	r, err := chunks.NewPageReader(chunks.PagedBlob{Name: path, ID: sha256.Sum256([]byte(path)), Size: st.Size(), PageSize: pageSize, Digests: dr}, fs, chunks.Options{Cache: cache, ReadAheadBytes: ra})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	l, err := sqlitelayer.OpenReaderAt(path, r, sqlitelayer.ReaderAtOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var read int64
	buf := make([]byte, guestRead)
	for _, rd := range reads {
		if _, err := l.ReadAt(buf[:rd[1]], rd[0]); err != nil {
			b.Fatal(err)
		}
		read += rd[1]
	}
	out, ds := r.Stats(), dr.Stats()
	out.FetchedBytes += ds.FetchedBytes
	out.FetchedChunks += ds.FetchedChunks
	return read, out
}

// measure opens the layer over a cold Reader, makes the reads, and
// returns the bytes read and the Reader's counters.
func measure(b *testing.B, path string, blob chunks.Blob, reads [][2]int64) (int64, chunks.Stats) {
	fs, err := chunks.OpenFileSource(path)
	if err != nil {
		b.Fatal(err)
	}
	defer fs.Close()
	cache, err := chunks.OpenCache(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	ra, _ := strconv.ParseInt(os.Getenv("HIBDISK_CHUNKS_READAHEAD"), 10, 64)
	r, err := chunks.NewReader(blob, fs, chunks.Options{Cache: cache, ReadAheadBytes: ra})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	l, err := sqlitelayer.OpenReaderAt(blob.Name, r, sqlitelayer.ReaderAtOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	var read int64
	buf := make([]byte, guestRead)
	for _, rd := range reads {
		if _, err := l.ReadAt(buf[:rd[1]], rd[0]); err != nil {
			b.Fatal(err)
		}
		read += rd[1]
	}
	return read, r.Stats()
}

// fileBlocks is a file of the image and its blocks, in file order.
type fileBlocks struct {
	path   string
	blocks []int64
}

// readBlockLists parses debugfs output of "blocks PATH" commands.
func readBlockLists(b *testing.B, path string) []fileBlocks {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var out []fileBlocks
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	name := ""
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "debugfs: blocks "); ok {
			name = strings.Trim(rest, `"`)
			continue
		}
		if name == "" {
			continue
		}
		var blocks []int64
		for f := range strings.FieldsSeq(line) {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				blocks = nil
				break
			}
			blocks = append(blocks, n)
		}
		if len(blocks) > 0 {
			out = append(out, fileBlocks{name, blocks})
		}
		name = ""
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	if len(out) < 400 {
		b.Fatalf("%s lists %d files with blocks; want at least 400", path, len(out))
	}
	return out
}

// fileReads are the reads of a whole file: its runs of contiguous
// blocks, in reads of up to guestRead bytes.
func fileReads(blocks []int64) [][2]int64 {
	var out [][2]int64
	for i := 0; i < len(blocks); {
		j := i + 1
		for j < len(blocks) && blocks[j] == blocks[j-1]+1 && int64(j-i)*fsBlock < guestRead {
			j++
		}
		out = append(out, [2]int64{blocks[i] * fsBlock, int64(j-i) * fsBlock})
		i = j
	}
	return out
}

// guestPlans picks the reads of each pattern (fixed seed).
func guestPlans(all []fileBlocks) map[string][][2]int64 {
	rng := rand.New(rand.NewPCG(1, 1))
	var files, large, small [][]int64
	dirs := map[string][][]int64{}
	var dirNames []string
	for _, f := range all {
		files = append(files, f.blocks)
		if len(f.blocks)*fsBlock >= 64<<10 {
			large = append(large, f.blocks)
		} else {
			small = append(small, f.blocks)
		}
		d := path.Dir(f.path)
		if dirs[d] == nil {
			dirNames = append(dirNames, d)
		}
		dirs[d] = append(dirs[d], f.blocks)
	}
	plans := map[string][][2]int64{}
	for _, i := range rng.Perm(len(large))[:min(40, len(large))] {
		plans["seq"] = append(plans["seq"], fileReads(large[i])...)
	}
	for _, i := range rng.Perm(len(small))[:min(300, len(small))] {
		plans["small"] = append(plans["small"], fileReads(small[i])...)
	}
	bySize := slices.SortedFunc(slices.Values(files), func(a, b []int64) int { return len(b) - len(a) })
	for _, f := range bySize[:4] {
		plans["big"] = append(plans["big"], fileReads(f)...)
	}
	picked := 0
	for _, i := range rng.Perm(len(dirNames)) {
		if fs := dirs[dirNames[i]]; len(fs) >= 10 && picked < 8 {
			picked++
			for _, f := range fs {
				plans["dirs"] = append(plans["dirs"], fileReads(f)...)
			}
		}
	}
	for range 2000 {
		f := files[rng.IntN(len(files))]
		plans["rand"] = append(plans["rand"], [2]int64{f[rng.IntN(len(f))] * fsBlock, fsBlock})
	}
	for _, p := range []string{"big", "seq", "small", "dirs", "rand"} {
		plans["all"] = append(plans["all"], plans[p]...)
	}
	return plans
}
