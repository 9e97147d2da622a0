package rawlayer

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
	"github.com/hibdisk/hibdisk/disklayer/memlayer"
)

// sampledFile returns content of n bytes that differs everywhere, so a
// change anywhere is a real change.
func sampledFile(n int) []byte {
	p := make([]byte, n)
	x := uint32(1)
	for i := range p {
		x = x*1664525 + 1013904223
		p[i] = byte(x >> 24)
	}
	return p
}

func digestOf(t *testing.T, p []byte) string {
	t.Helper()
	sum, err := DigestReaderAt(bytes.NewReader(p), int64(len(p)))
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// The digest is stored in layer files: this pins the format, so a change
// of the sampling layout cannot pass unnoticed. The expected values were
// computed independently, by a Python transcription of the documented
// layout (SHA-256 of the big-endian size, then of each span's big-endian
// offset, length and bytes).
func TestDigestGolden(t *testing.T) {
	for _, c := range []struct {
		size int
		want string
	}{
		{0, "sha256-sampled:9d908ecfb6b256def8b49a7c504e6c889c4b0e41fe6ce3e01863dd7b61a20aa0"},
		{4096, "sha256-sampled:edc94bd02a8c8c773538d7774ff130ee25b91b9eaaded8cd2660dc191e9c8180"},
		{16 << 20, "sha256-sampled:bb6962e45ff70c6b435e19e8afaa5cf5201be2f75ded54f8c3c73390d88d6d07"},
	} {
		if got := digestOf(t, sampledFile(c.size)); got != c.want {
			t.Errorf("digest of %d bytes = %s, want %s", c.size, got, c.want)
		}
	}
}

func TestDigestFile(t *testing.T) {
	content := sampledFile(10 << 20)
	path := filepath.Join(t.TempDir(), "base.img")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Digest(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := digestOf(t, content); got != want {
		t.Errorf("Digest(file) = %s, DigestReaderAt(same bytes) = %s", got, want)
	}
	if !strings.HasPrefix(got, DigestPrefix) || len(got) != len(DigestPrefix)+64 {
		t.Errorf("Digest = %q, want %s and 64 hex digits", got, DigestPrefix)
	}
}

// Changes the digest is documented to catch, and the one it can miss.
func TestDigestSensitivity(t *testing.T) {
	const size = 64 << 20
	base := sampledFile(size)
	want := digestOf(t, base)
	spans := sampleSpans(size)
	if len(spans) != 2+digestSamples {
		t.Fatalf("%d spans for a 64 MiB file, want %d", len(spans), 2+digestSamples)
	}
	flip := func(name string, at int) {
		t.Helper()
		changed := bytes.Clone(base)
		changed[at] ^= 1
		if digestOf(t, changed) == want {
			t.Errorf("%s: flipping byte %d left the digest unchanged", name, at)
		}
	}
	flip("first byte", 0)
	flip("end of the first MiB", digestEdge-1)
	flip("last byte", size-1)
	flip("start of the last MiB", size-digestEdge)
	for i, s := range spans[1 : len(spans)-1] {
		if i%10 == 0 {
			flip("sample window", int(s.off+s.len/2))
		}
	}
	if digestOf(t, base[:size-512]) == want {
		t.Errorf("a shorter file has the same digest")
	}
	// A byte between two windows is not read: the documented miss.
	gap := int(spans[1].off + spans[1].len + 1)
	if gap >= int(spans[2].off) {
		t.Fatalf("no gap between the first two windows of a 64 MiB file")
	}
	changed := bytes.Clone(base)
	changed[gap] ^= 1
	if digestOf(t, changed) != want {
		t.Errorf("a byte outside every sample changed the digest: the sampling layout is not what the docs say")
	}
	// Small files are hashed whole.
	small := sampledFile(digestWhole)
	smallChanged := bytes.Clone(small)
	smallChanged[digestWhole/2+12345] ^= 1
	if digestOf(t, small) == digestOf(t, smallChanged) {
		t.Errorf("a change in a file small enough to hash whole was missed")
	}
}

func TestSampleSpans(t *testing.T) {
	for _, size := range []int64{digestWhole + 1, 64 << 20, 1 << 40, 1 << 62} {
		spans := sampleSpans(size)
		if spans[0] != (span{0, digestEdge}) || spans[len(spans)-1] != (span{size - digestEdge, digestEdge}) {
			t.Errorf("size %d: edges %v and %v", size, spans[0], spans[len(spans)-1])
		}
		for i := 1; i < len(spans); i++ {
			if spans[i].off < spans[i-1].off+spans[i-1].len {
				t.Errorf("size %d: span %d %v overlaps %v", size, i, spans[i], spans[i-1])
			}
		}
		if last := spans[len(spans)-2]; last.off+last.len != size-digestEdge {
			t.Errorf("size %d: the last window %v does not touch the last MiB", size, last)
		}
	}
}

// TestContentDigest: the whole-content digest depends on the bytes alone
// (a sparse and a fully written copy agree) and sees a change anywhere.
func TestContentDigest(t *testing.T) {
	dir := t.TempDir()
	const size = 8<<20 + 1000 // not a whole number of chunks
	sparse := filepath.Join(dir, "sparse.img")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, 5000)
	for _, off := range []int64{0, 3<<20 + 4096, size - 5000} {
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	whole, err := os.ReadFile(sparse)
	if err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(dir, "full.img")
	if err := os.WriteFile(full, whole, 0o644); err != nil {
		t.Fatal(err)
	}
	a, n, err := ContentDigest(sparse)
	if err != nil || n != size {
		t.Fatal(n, err)
	}
	b, _, err := ContentDigest(full)
	if err != nil {
		t.Fatal(err)
	}
	if a != b || !strings.HasPrefix(a, ContentPrefix) {
		t.Errorf("sparse %s, full %s: want one digest", a, b)
	}
	for _, off := range []int64{1, 5<<20 + 17, size - 1} {
		changed := bytes.Clone(whole)
		changed[off] ^= 1
		p := filepath.Join(dir, "changed.img")
		if err := os.WriteFile(p, changed, 0o644); err != nil {
			t.Fatal(err)
		}
		if c, _, err := ContentDigest(p); err != nil || c == a {
			t.Errorf("one byte changed at %d: digest %s, %v; want a different digest", off, c, err)
		}
	}
	// Zeros appended are a different size, so a different image.
	if err := os.WriteFile(full, append(whole, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, _, _ := ContentDigest(full); c == a {
		t.Error("a longer image with the same data has the same digest")
	}
}

// TestViewDigest: the digest of a layer's view equals the
// ContentDigest of a raw image of the same content, whether read from
// the raw file or from a memlayer that stores it sparsely.
func TestViewDigest(t *testing.T) {
	const size = 3*64<<10 + 4096 // a partial chunk at the end
	content := make([]byte, size)
	copy(content[100:], "first chunk")
	copy(content[2*64<<10+7:], "third chunk")
	copy(content[size-5:], "tail!")
	path := filepath.Join(t.TempDir(), "view.img")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	want, _, err := ContentDigest(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	mem, err := memlayer.New(size, 512, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mem.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	for name, l := range map[string]disklayer.Layer{"raw": raw, "mem": mem} {
		if got, err := ViewDigest(l); err != nil || got != want {
			t.Errorf("ViewDigest(%s) = %s, %v; want %s", name, got, err, want)
		}
	}
}
