package rawlayer

import (
	"errors"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// dataRun finds the first run of data at or after pos: [start, end), or
// start = end = math.MaxInt64 when only holes follow. end > start, so a
// caller always makes progress, even when a concurrent Zero punches the
// run between the two seeks (the run is then reported as data, which it
// may be).
func dataRun(f *os.File, pos int64) (start, end int64, err error) {
	start, err = f.Seek(pos, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return math.MaxInt64, math.MaxInt64, nil
	}
	if err != nil {
		return 0, 0, err
	}
	end, err = f.Seek(start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, err
	}
	return start, max(end, start+1), nil
}

// punchHole deallocates [off, off+length) keeping the file size; the range
// then reads as zeros.
func punchHole(f *os.File, off, length int64) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var punchErr error
	err = conn.Control(func(fd uintptr) {
		punchErr = unix.Fallocate(int(fd), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	})
	if err != nil {
		return err
	}
	if punchErr != nil {
		return os.NewSyscallError("fallocate", punchErr)
	}
	return nil
}
