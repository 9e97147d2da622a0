package remote_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hibdisk/hibdisk/diffdisk"

	"github.com/hibdisk/hibdisk/internal/s3test"
	"github.com/hibdisk/hibdisk/remote"
)

// BenchmarkPushPull pushes a chain whose base holds 256 MiB of random
// data (a multipart upload) to a new prefix each time, and pulls it into
// a new directory each time, over loopback to versitygw on the same
// machine: MB/s is the throughput of push (digests, upload) and of pull
// (download, verification, fsync). Run with -benchtime=3x:
// every iteration stores the chain again.
func BenchmarkPushPull(b *testing.B) {
	srv := s3test.Start(b, bucket)
	top := makeChain(b, b.TempDir(), 512<<20, 256<<20, 10)
	// Sealed first: the figure is of the transfer (a push of a sealed
	// chain digests each layer and uploads it), not of the VACUUM INTO
	// that the first seal does once.
	start := time.Now()
	if _, err := diffdisk.Seal(top); err != nil {
		b.Fatal(err)
	}
	b.Logf("seal of the chain: %v", time.Since(start))
	ctx := context.Background()
	var size int64
	b.Run("push", func(b *testing.B) {
		i := 0
		for b.Loop() {
			s := openStore(b, srv, fmt.Sprintf("s3://golden/bench%d", i))
			res, err := remote.Push(ctx, s, top, "v1", remote.PushOptions{})
			if err != nil {
				b.Fatal(err)
			}
			size = 0
			for _, l := range res.Layers {
				size += l.Size
			}
			b.SetBytes(size)
			i++
		}
	})
	b.Run("pull", func(b *testing.B) {
		s := openStore(b, srv, "s3://golden/bench0")
		u, _ := remote.ParseURL("s3://golden/bench0:v1")
		i := 0
		for b.Loop() {
			res, err := remote.Pull(ctx, s, u, filepath.Join(b.TempDir(), fmt.Sprint(i)))
			if err != nil {
				b.Fatal(err)
			}
			size = 0
			for _, l := range res.Layers {
				size += l.Size
			}
			b.SetBytes(size)
			i++
		}
	})
}
