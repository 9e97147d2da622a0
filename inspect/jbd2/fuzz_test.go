package jbd2

import (
	"bytes"
	"os"
	"os/exec"
	"testing"

	"github.com/hibdisk/hibdisk/inspect/jbd2/jbd2test"
)

// fuzzBlockSize is the block size of the journals FuzzReplay feeds.
const fuzzBlockSize = 1024

// FuzzReplay runs the three recovery passes over arbitrary journal
// bytes (block 0 the journal superblock, the journal mapped onto itself)
// and reads every replayed block back: damaged input may fail, never
// panic. The seeds are the first blocks of real journals debugfs wrote
// with each checksum version, 32- and 64-bit tags and revokes.
func FuzzReplay(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < fuzzBlockSize {
			return
		}
		fs := &ext4{r: bytes.NewReader(data), blockSize: fuzzBlockSize, sb: make([]byte, superSize)}
		j := &journal{fs: fs, bs: fuzzBlockSize, bmap: blockMap{{log: 0, phys: 0, count: 1 << 20}},
			revoked: map[uint64]uint32{}, overlay: map[uint64]logBlock{}}
		sb, err := parseSuper(data[:fuzzBlockSize], fuzzBlockSize, min(be32(data, 0x10), 1<<16))
		if err != nil {
			return
		}
		j.sb = sb
		if err := j.recover(); err != nil {
			return
		}
		v := &View{base: bytes.NewReader(data), blockSize: fuzzBlockSize}
		if err := v.install(j, fs); err != nil {
			return
		}
		buf := make([]byte, 3*fuzzBlockSize)
		for _, b := range v.Blocks() {
			_, _ = v.ReadAt(buf, int64(b)*fuzzBlockSize-fuzzBlockSize/2)
		}
	})
}

// fuzzSeeds are the first 96 blocks of journals written by debugfs, or
// none when e2fsprogs is missing (then the fuzzer starts from nothing).
func fuzzSeeds(f *testing.F) [][]byte {
	if _, err := exec.LookPath("debugfs"); err != nil {
		return nil
	}
	var seeds [][]byte
	for _, c := range []struct{ features, open string }{
		{"metadata_csum,64bit", "-c"}, {"metadata_csum,^64bit", "-c -v 2"},
		{"^metadata_csum,^64bit", "-c"}, {"^metadata_csum,64bit", ""},
	} {
		img := jbd2test.Mkfs(f, 8<<20, "", "-b", "1024", "-O", c.features)
		bs := uint64(fuzzBlockSize)
		a := bytes.Repeat([]byte("seed data "), int(bs)/10+1)[:bs]
		b := append([]byte(nil), a...)
		copy(b, []byte{0xC0, 0x3B, 0x39, 0x98}) // escaped
		jbd2test.WriteJournal(f, img, c.open,
			jbd2test.Txn{Blocks: []uint64{3000, 3001}, Data: append(a, b...)},
			jbd2test.Txn{Revoke: []uint64{3000}},
			jbd2test.Txn{Blocks: []uint64{3002}, Data: a, Uncommitted: true})
		data, err := os.ReadFile(img)
		if err != nil {
			f.Fatal(err)
		}
		fs, err := readExt4(bytes.NewReader(data), 0)
		if err != nil {
			f.Fatal(err)
		}
		j, err := openJournal(fs)
		if err != nil {
			f.Fatal(err)
		}
		var seed []byte // the journal's first blocks, in journal order
		for i := range uint32(96) {
			b, err := j.read(i)
			if err != nil {
				f.Fatal(err)
			}
			seed = append(seed, b...)
		}
		seeds = append(seeds, seed)
	}
	return seeds
}
