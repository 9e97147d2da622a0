//go:build !linux

package rawlayer

import (
	"errors"
	"math"
	"os"
)

// dataRun reports everything as data where holes cannot be found.
func dataRun(_ *os.File, pos int64) (start, end int64, err error) {
	return pos, math.MaxInt64, nil
}

// punchHole is unsupported here; Zero writes zeros instead.
func punchHole(*os.File, int64, int64) error { return errors.ErrUnsupported }
