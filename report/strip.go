package report

import (
	"fmt"
	"html"
	"path/filepath"
	"strings"
)

// The strip: the disk from offset 0 to its size, left to right, in
// stripWidth columns. Each column is coloured by the layer that supplies
// most of its bytes (data full, zeros pale), grey where no layer stores
// anything; below it, when comparing, a red mark on every column where the
// two images differ.
const (
	stripWidth  = 960
	stripHeight = 28
	diffHeight  = 10
	labelHeight = 14
	legendRow   = 16
)

// palette colours layers by depth, top first; deeper layers than it has
// reuse it.
var palette = []string{"#1f6fb4", "#e8830c", "#2f9e44", "#8d5ac7", "#a0522d", "#d6409f", "#0f9fb0", "#9c9c1a"}

const unallocated = "#e4e4e4"

func layerColor(depth, _ int) string { return palette[depth%len(palette)] }

// column is what one column of the strip shows.
type column struct {
	depth int    // supplying layer, -1 for none
	kind  string // "data", "zero", "none"
}

// columns picks each column's majority supplier.
func columns(s Side) []column {
	cols := make([]column, stripWidth)
	if s.Size <= 0 {
		for i := range cols {
			cols[i] = column{-1, "none"}
		}
		return cols
	}
	type key struct {
		depth int
		kind  string
	}
	weights := make([]map[key]int64, stripWidth)
	colStart := func(c int) int64 { return int64(float64(s.Size) * float64(c) / stripWidth) }
	for _, r := range s.Runs {
		k := key{r.Depth, r.Kind}
		if r.Kind == "none" {
			k.depth = -1
		}
		end := min(r.Start+r.Length, s.Size)
		c := int(float64(r.Start) / float64(s.Size) * stripWidth)
		for ; c < stripWidth && colStart(c) < end; c++ {
			lo, hi := max(r.Start, colStart(c)), min(end, colStart(c+1))
			if hi <= lo {
				continue
			}
			if weights[c] == nil {
				weights[c] = map[key]int64{}
			}
			weights[c][k] += hi - lo
		}
	}
	for c := range cols {
		best, bestN := key{-1, "none"}, int64(-1)
		for k, n := range weights[c] {
			// Ties go to the layer nearer the top, then to data.
			if n > bestN || n == bestN && (k.depth < best.depth || k.depth == best.depth && k.kind < best.kind) {
				best, bestN = k, n
			}
		}
		cols[c] = column(best)
	}
	return cols
}

// diffColumns marks the columns where a changed range falls.
func diffColumns(size int64, changed []Range) []bool {
	marks := make([]bool, stripWidth)
	if size <= 0 {
		return marks
	}
	for _, r := range changed {
		first := int(float64(r.Off) / float64(size) * stripWidth)
		last := int(float64(r.Off+r.Len-1) / float64(size) * stripWidth)
		for c := max(first, 0); c <= min(last, stripWidth-1); c++ {
			marks[c] = true
		}
	}
	return marks
}

// stripSVG draws s; changed, when not nil, adds the row of differences.
// standalone makes it a document of its own, with its legend.
func stripSVG(s Side, changed []Range, standalone bool) string {
	var b strings.Builder
	height := stripHeight + labelHeight
	if changed != nil {
		height += diffHeight + 2
	}
	legendTop := height + 6
	if standalone {
		height = legendTop + legendRow*(len(s.Layers)+1) + 4
	}
	if standalone {
		b.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	}
	ns := "" // inline SVG in HTML needs no namespace
	if standalone {
		ns = ` xmlns="http://www.w3.org/2000/svg"`
	}
	fmt.Fprintf(&b, `<svg%s class="strip" viewBox="0 0 %d %d" width="100%%" preserveAspectRatio="none" role="img" aria-label="%s">`,
		ns, stripWidth, height, html.EscapeString("map of "+s.Path))
	b.WriteString("\n")
	if standalone {
		fmt.Fprintf(&b, `<style>text{font:11px sans-serif;fill:#333}</style>`+"\n")
	}
	cols := columns(s)
	for c := 0; c < stripWidth; {
		e := c + 1
		for e < stripWidth && cols[e] == cols[c] {
			e++
		}
		col := cols[c]
		fill, opacity, what := unallocated, "1", "no layer stores this (reads as zeros)"
		if col.depth >= 0 {
			fill = layerColor(col.depth, len(s.Layers))
			what = fmt.Sprintf("layer %d: %s (%s)", col.depth, layerName(s, col.depth), col.kind)
			if col.kind == "zero" {
				opacity, what = "0.35", what+" — zeros"
			}
		}
		start, end := s.Size*int64(c)/stripWidth, s.Size*int64(e)/stripWidth
		fmt.Fprintf(&b, `<rect x="%d" y="0" width="%d" height="%d" fill="%s" fill-opacity="%s"><title>%s – %s: %s</title></rect>`+"\n",
			c, e-c, stripHeight, fill, opacity, HumanBytes(start), HumanBytes(end), html.EscapeString(what))
		c = e
	}
	y := stripHeight
	if changed != nil {
		marks := diffColumns(s.Size, changed)
		y += 2
		fmt.Fprintf(&b, `<rect x="0" y="%d" width="%d" height="%d" fill="#f6f6f6"/>`+"\n", y, stripWidth, diffHeight)
		for c := 0; c < stripWidth; c++ {
			if !marks[c] {
				continue
			}
			e := c + 1
			for e < stripWidth && marks[e] {
				e++
			}
			fmt.Fprintf(&b, `<rect class="differs" x="%d" y="%d" width="%d" height="%d" fill="#d62728"><title>differs between %s and %s</title></rect>`+"\n",
				c, y, e-c, diffHeight, HumanBytes(s.Size*int64(c)/stripWidth), HumanBytes(s.Size*int64(e)/stripWidth))
			c = e
		}
		y += diffHeight
	}
	// Offsets under the strip.
	for i := 0; i <= 4; i++ {
		anchor := "middle"
		switch i {
		case 0:
			anchor = "start"
		case 4:
			anchor = "end"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="%s" font-size="10">%s</text>`+"\n",
			stripWidth*i/4, y+labelHeight-2, anchor, HumanBytes(s.Size*int64(i)/4))
	}
	if standalone {
		ly := legendTop
		for d := range s.Layers {
			fmt.Fprintf(&b, `<rect x="0" y="%d" width="12" height="12" fill="%s"/><text x="18" y="%d">layer %d: %s</text>`+"\n",
				ly, layerColor(d, len(s.Layers)), ly+10, d, html.EscapeString(s.Layers[d].Path))
			ly += legendRow
		}
		fmt.Fprintf(&b, `<rect x="0" y="%d" width="12" height="12" fill="%s"/><text x="18" y="%d">no layer (reads as zeros); pale: a layer stores zeros</text>`+"\n",
			ly, unallocated, ly+10)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func layerName(s Side, depth int) string {
	if depth < len(s.Layers) {
		return filepath.Base(s.Layers[depth].Path)
	}
	return fmt.Sprintf("layer %d", depth)
}
