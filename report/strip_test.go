package report

import (
	"strings"
	"testing"
)

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 32 << 20: "32 MiB", 100 << 30: "100 GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestColumns: each column shows the supplier of most of its bytes.
func TestColumns(t *testing.T) {
	const col = 1 << 20 // one column's bytes
	s := Side{Size: stripWidth * col, Runs: []Run{
		{Start: 0, Length: col / 4, Depth: 0, Kind: "data"},           // column 0: a quarter from the top,
		{Start: col / 4, Length: 3 * col / 4, Depth: 1, Kind: "data"}, // three quarters from below
		{Start: col, Length: col, Depth: 0, Kind: "zero"},
		{Start: 2 * col, Length: (stripWidth - 2) * col, Kind: "none", Depth: -1},
	}}
	cols := columns(s)
	for i, want := range []column{{1, "data"}, {0, "zero"}, {-1, "none"}} {
		if cols[i] != want {
			t.Errorf("column %d = %+v, want %+v", i, cols[i], want)
		}
	}
	if cols[stripWidth-1] != (column{-1, "none"}) {
		t.Errorf("last column = %+v", cols[stripWidth-1])
	}
	marks := diffColumns(s.Size, []Range{{Off: 5*col + 10, Len: 1}, {Off: 7 * col, Len: 2 * col}})
	for c, want := range map[int]bool{4: false, 5: true, 6: false, 7: true, 8: true, 9: false} {
		if marks[c] != want {
			t.Errorf("diff mark of column %d = %v, want %v", c, marks[c], want)
		}
	}
	svg := stripSVG(s, []Range{{Off: 0, Len: 1}}, true)
	if !strings.HasPrefix(svg, "<?xml") || strings.Count(svg, `class="differs"`) != 1 || !strings.Contains(svg, palette[1]) {
		t.Errorf("standalone strip:\n%s", svg)
	}
}
