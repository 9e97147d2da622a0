package main

import (
	"fmt"
	"sort"
	"strings"
)

// suggestion is the "; did you mean ..." tail of an unknown-command
// error: the names what was typed is a prefix of, or else the nearest
// names within two edits (insert, delete, substitute, swap adjacent).
// When no name is close, it is " (see HELP)".
func suggestion(typed string, names []string, help string) string {
	none := fmt.Sprintf(" (see %s)", help)
	if typed == "" || strings.HasPrefix(typed, "-") {
		return none
	}
	var prefixed []string
	for _, n := range names {
		if strings.HasPrefix(n, typed) {
			prefixed = append(prefixed, n)
		}
	}
	near := prefixed
	if len(near) == 0 {
		// Two edits turn any two-letter word into another: allow
		// fewer for short words.
		best := min(2, len(typed)/2)
		for _, n := range names {
			switch d := editDistance(typed, n); {
			case d < best:
				best, near = d, []string{n}
			case d == best:
				near = append(near, n)
			}
		}
	}
	if len(near) == 0 {
		return none
	}
	sort.Strings(near)
	quoted := make([]string, len(near))
	for i, n := range near {
		quoted[i] = fmt.Sprintf("%q", n)
	}
	return "; did you mean " + strings.Join(quoted, " or ") + "?"
}

// editDistance is the optimal-string-alignment distance between a and b:
// the Levenshtein distance with a swap of adjacent letters as one edit.
func editDistance(a, b string) int {
	r, s := []rune(a), []rune(b)
	d := make([][]int, len(r)+1)
	for i := range d {
		d[i] = make([]int, len(s)+1)
		d[i][0] = i
	}
	for j := range s {
		d[0][j+1] = j + 1
	}
	for i := 1; i <= len(r); i++ {
		for j := 1; j <= len(s); j++ {
			cost := 1
			if r[i-1] == s[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && r[i-1] == s[j-2] && r[i-2] == s[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(r)][len(s)]
}
