package nbd

import (
	"errors"
	"strconv"
	"syscall"
)

// Errno is an error value of the NBD protocol, sent in replies. Backends
// choose the code a client sees by returning (or wrapping) an Errno:
//
//	return fmt.Errorf("write at %d: %w: %w", off, nbd.ENOSPC, err)
//
// An error that wraps no Errno is classified by the syscall.Errno it
// wraps, if any (ENOSPC, EDQUOT, EFBIG → ENOSPC; EROFS, EPERM, EACCES →
// EPERM; EINVAL → EINVAL), and is EIO otherwise.
type Errno uint32

// Error values defined by the protocol.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: operation not permitted"
	case EIO:
		return "nbd: input/output error"
	case ENOMEM:
		return "nbd: cannot allocate memory"
	case EINVAL:
		return "nbd: invalid argument"
	case ENOSPC:
		return "nbd: no space left on device"
	case EOVERFLOW:
		return "nbd: value too large"
	case ENOTSUP:
		return "nbd: operation not supported"
	case ESHUTDOWN:
		return "nbd: server is shutting down"
	}
	return "nbd: error " + strconv.FormatUint(uint64(e), 10)
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// errnoOf classifies a backend error for the wire; see Errno.
func errnoOf(err error) Errno {
	var e Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	var se syscall.Errno
	if errors.As(err, &se) {
		switch se {
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EROFS, syscall.EPERM, syscall.EACCES:
			return EPERM
		case syscall.EINVAL:
			return EINVAL
		}
	}
	return EIO
}
