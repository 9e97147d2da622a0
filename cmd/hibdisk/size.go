package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// parseSize reads a byte count the way qemu-img does: a plain number is
// bytes; K, M, G, T, P, E suffixes (case-insensitive, optional trailing
// "B" or "iB") are powers of 1024.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		case 'p', 'P':
			mult = 1 << 50
		case 'e', 'E':
			mult = 1 << 60
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	if strings.Contains(t, ".") {
		f, err := strconv.ParseFloat(t, 64)
		if err != nil || f < 0 || f*float64(mult) >= math.MaxInt64 {
			return 0, fmt.Errorf("invalid size %q", s)
		}
		return int64(f * float64(mult)), nil
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q (want bytes or a K/M/G/T suffix)", s)
	}
	return n * mult, nil
}

// formatSize prints bytes the way qemu-img info does ("1 GiB", "64 MiB",
// "1.5 KiB").
func formatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n)
	i := 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	s := strconv.FormatFloat(f, 'f', 2, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + " " + units[i]
}
