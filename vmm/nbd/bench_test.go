package nbd

import (
	"fmt"
	"testing"
)

// Benchmarks over a unix socket with the raw client: b.N requests of
// 4 KiB at the given queue depth against the in-memory backend.

func benchmarkIO(b *testing.B, typ uint16, depth int, workers bool) {
	mem := newMemBackend(64 << 20)
	mem.WriteAt(make([]byte, 64<<20), 0) // allocated: reads return data
	start := startServer
	if workers {
		start = startWorkerServer
	}
	_, sock := start(b, Export{Name: "d", Backend: mem})
	c, _ := connect(b, sock, "d", true)
	payload := make([]byte, 4096)
	send := func(i int) {
		off := uint64(i*4096*7) % (64 << 20)
		if typ == cmdWrite {
			c.request(cmdWrite, 0, uint64(i), off, 4096, payload)
		} else {
			c.request(cmdRead, 0, uint64(i), off, 4096, nil)
		}
	}
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	sent := 0
	for ; sent < min(depth, b.N); sent++ {
		send(sent)
	}
	for done := 0; done < b.N; done++ {
		if r := c.reply(0); r.errno != 0 {
			b.Fatalf("errno %d", r.errno)
		}
		if sent < b.N {
			send(sent)
			sent++
		}
	}
}

func BenchmarkIO(b *testing.B) {
	for _, typ := range []uint16{cmdRead, cmdWrite} {
		for _, depth := range []int{1, 32} {
			for _, workers := range []bool{false, true} {
				name := fmt.Sprintf("%s/QD%d/workers=%v", map[uint16]string{cmdRead: "read", cmdWrite: "write"}[typ], depth, workers)
				b.Run(name, func(b *testing.B) { benchmarkIO(b, typ, depth, workers) })
			}
		}
	}
}
