package layertest

import (
	"testing"

	"github.com/hibdisk/hibdisk/disklayer"
)

// The suite is only as good as its checkers: they must reject what the
// contract forbids.
func TestCheckExtentShape(t *testing.T) {
	const ss = 512
	a, z, d := disklayer.Absent, disklayer.Zero, disklayer.Data
	ext := func(off, length int64, kind disklayer.ExtentKind) disklayer.Extent {
		return disklayer.Extent{Off: off, Len: length, Kind: kind}
	}
	for _, c := range []struct {
		name        string
		list        []disklayer.Extent
		off, length int64
		ok          bool
	}{
		{"empty range", nil, 100, 0, true},
		{"clipped ends", []disklayer.Extent{ext(100, 412, a), ext(512, 512, d), ext(1024, 10, z)}, 100, 934, true},
		{"missing range", nil, 0, 512, false},
		{"gap", []disklayer.Extent{ext(0, 512, a), ext(1024, 512, d)}, 0, 1536, false},
		{"overlap", []disklayer.Extent{ext(0, 1024, a), ext(512, 1024, d)}, 0, 1536, false},
		{"starts late", []disklayer.Extent{ext(512, 512, d)}, 0, 1024, false},
		{"ends short", []disklayer.Extent{ext(0, 512, d)}, 0, 1024, false},
		{"runs past", []disklayer.Extent{ext(0, 2048, d)}, 0, 1024, false},
		{"empty extent", []disklayer.Extent{ext(0, 512, d), ext(512, 0, a), ext(512, 512, z)}, 0, 1024, false},
		{"not merged", []disklayer.Extent{ext(0, 512, d), ext(512, 512, d)}, 0, 1024, false},
		{"unaligned inner boundary", []disklayer.Extent{ext(0, 700, d), ext(700, 324, a)}, 0, 1024, false},
		{"unknown kind", []disklayer.Extent{ext(0, 512, disklayer.ExtentKind(7))}, 0, 512, false},
	} {
		err := checkExtentShape(c.list, c.off, c.length, ss)
		if (err == nil) != c.ok {
			t.Errorf("%s: checkExtentShape(%v, %d, %d) = %v, want ok %v", c.name, c.list, c.off, c.length, err, c.ok)
		}
	}
}

func TestCheckExtentsAgree(t *testing.T) {
	content := make([]byte, 3*512)
	content[512+7] = 1 // inside the second sector
	list := func(kinds ...disklayer.ExtentKind) []disklayer.Extent {
		var l []disklayer.Extent
		for i, k := range kinds {
			l = append(l, disklayer.Extent{Off: 1000 + int64(i)*512, Len: 512, Kind: k})
		}
		return l
	}
	if err := checkExtentsAgree(list(disklayer.Absent, disklayer.Data, disklayer.Zero), content, 1000); err != nil {
		t.Errorf("data under a Data extent rejected: %v", err)
	}
	for _, k := range []disklayer.ExtentKind{disklayer.Absent, disklayer.Zero} {
		if err := checkExtentsAgree(list(disklayer.Data, k, disklayer.Data), content, 1000); err == nil {
			t.Errorf("a non-zero byte under a %v extent was accepted", k)
		}
	}
}

// The fuzz decoder must only produce operations the harness can run:
// buffers of sane sizes and aligned FillAbsent ranges, whatever the input.
func TestDecodeOps(t *testing.T) {
	inputs := [][]byte{
		{},
		{7, 255, 255, 255, 255, 255},
		{0, 7, 0, 7, 0, 7, 0, 7, 5, 7, 3},
		{1, 7, 1, 7, 2, 7, 3, 2, 7, 5, 6, 7, 7, 7},
	}
	for b := range 256 {
		inputs = append(inputs, []byte{byte(b), byte(b * 7), byte(b * 13), byte(b * 31), byte(b), 0xff})
	}
	const ss, size = 512, 4 * 512
	for _, input := range inputs {
		in := fuzzInput{data: input}
		for o := range decodeOps(&in, size, ss) {
			switch o.kind {
			case opWrite, opRead, opReadOwn:
				if o.length < 0 || o.length > size+ss {
					t.Errorf("input %v: %v has a buffer of %d bytes", input, o, o.length)
				}
			case opFillAbsent:
				if o.off%ss != 0 || o.length%ss != 0 || o.off+o.length > size || o.length == 0 {
					t.Errorf("input %v: %v is not an aligned in-range fill", input, o)
				}
			}
			if (o.kind == opWrite || o.kind == opFillAbsent) && int64(len(o.data)) != o.length {
				t.Errorf("input %v: %v has %d data bytes", input, o, len(o.data))
			}
		}
	}
}
