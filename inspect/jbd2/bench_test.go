package jbd2_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/hibdisk/hibdisk/inspect/jbd2"
	"github.com/hibdisk/hibdisk/inspect/jbd2/jbd2test"
)

// BenchmarkReplay64MiB replays a 64 MiB journal (4 KiB blocks) that
// debugfs filled with transactions of 1000 blocks each (about 60 MiB
// logged, crc32c v3 checksums), from a file, and reads the replayed
// blocks back through the View.
func BenchmarkReplay64MiB(b *testing.B) {
	img := jbd2test.Mkfs(b, 512<<20, "", "-b", "4096", "-J", "size=64", "-O", "metadata_csum,64bit")
	const perTxn, txns = 1000, 15
	data := bytes.Repeat([]byte("benchmark block "), perTxn*4096/16)
	var all []jbd2test.Txn
	for i := range txns {
		blocks := make([]uint64, perTxn)
		for k := range blocks {
			blocks[k] = uint64(40000 + i*perTxn + k)
		}
		all = append(all, jbd2test.Txn{Blocks: blocks, Data: data})
	}
	jbd2test.WriteJournal(b, img, "-c", all...)
	f, err := os.Open(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(perTxn * txns * 4096)
	buf := make([]byte, 1<<20)
	for b.Loop() {
		v, err := jbd2.Replay(f, 0)
		if err != nil {
			b.Fatal(err)
		}
		if v.Info.Blocks != perTxn*txns+1 {
			b.Fatalf("%d blocks overlaid", v.Info.Blocks)
		}
		if _, err := v.ReadAt(buf, 40000*4096); err != nil {
			b.Fatal(err)
		}
	}
}
