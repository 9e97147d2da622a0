package nbd

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// SparseReader is an optional Backend ability: read and report zero runs
// in one pass. ReadSparse fills p from off exactly like ReadAt and calls
// zero, in order, for runs inside [off, off+len(p)) that read as zeros;
// the server sends them as OFFSET_HOLE chunks, which the protocol defines
// by content ("reads as zeros"), allocated or not. A backend may report
// fewer runs than there are (not splitting small reads, say). Without it,
// a structured READ asks BlockStatus first and then reads only the data
// runs.
type SparseReader interface {
	ReadSparse(p []byte, off int64, zero func(off, length int64)) error
}

// Limits on the extents of one reply.
const (
	maxStatusExtents = 1024 // descriptors in one BLOCK_STATUS reply
	maxReadChunks    = 64   // content chunks in one READ reply; more: one data chunk
)

// run is a range with one base:allocation state.
type run struct {
	off, length int64
	state       uint32
}

// worker executes requests of one connection. Its scratch space is reused
// for every request, so that steady-state I/O allocates nothing.
type worker struct {
	c         *conn
	handedOff bool   // the request just handled went to the sender goroutine (conn.sendBehind)
	out       []byte // reply headers and small replies
	iov       [][]byte

	// Extent collection state (see collect).
	runs               []run
	cur, end           int64
	maxRuns            int
	readMode           bool // group by "reads as zero" only
	truncated, invalid bool
	collectFn          func(off, length int64, state uint32) bool
	zeroFn             func(off, length int64)
}

func newWorker(c *conn) *worker {
	w := &worker{c: c, out: make([]byte, 0, 256)}
	w.collectFn = w.collect
	w.zeroFn = w.zeroRun
	return w
}

func (c *conn) worker() {
	w := newWorker(c)
	for r := range c.queue {
		w.run(r)
	}
}

// run executes r, answers it and releases it.
func (w *worker) run(r *request) {
	c := w.c
	if r.errno != 0 {
		w.handle(r)
	} else {
		start := time.Now()
		w.handle(r)
		c.observe(time.Since(start))
	}
	if w.handedOff { // the sender goroutine answers and releases r
		w.handedOff = false
		return
	}
	c.budget.release(r.cost)
	c.freeRequest(r)
	c.inflight.Done()
}

// send and sendv send the final reply of a request. The request stops
// counting as pending just before, so that a client waiting for this
// reply (queue depth 1) does not make the reader start another worker.
// The reader's own worker corks its replies while more requests wait.
func (w *worker) send(b []byte) {
	w.c.pending.Add(-1)
	if w == w.c.inline && w.c.cork(b) {
		return
	}
	w.c.send(b)
}

func (w *worker) sendv(v [][]byte) {
	w.c.pending.Add(-1)
	if w == w.c.inline && w.c.cork(v...) {
		return
	}
	nb := net.Buffers(v)
	w.c.sendv(&nb)
}

func (w *worker) handle(r *request) {
	c := w.c
	if r.errno != 0 {
		w.errorReply(r, r.errno, r.errMsg)
		return
	}
	b := c.exp.Backend
	var err error
	switch r.typ {
	case cmdRead:
		w.read(r)
		return
	case cmdBlockStatus:
		w.blockStatus(r)
		return
	case cmdWrite:
		if r.length > 0 {
			_, err = b.WriteAt(*r.buf, r.off)
		}
	case cmdTrim, cmdWriteZeroes:
		// Zeroing is always fast (no data is written), so FAST_ZERO
		// never fails, and deallocating satisfies NO_HOLE's intent of
		// reading back zeros on a sparse store.
		if r.length > 0 {
			err = b.Zero(r.off, int64(r.length))
		}
	case cmdFlush:
		err = b.Flush()
	case cmdCache:
		// Accepted as a hint and ignored; the range was checked.
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && (r.typ == cmdWrite || r.typ == cmdTrim || r.typ == cmdWriteZeroes) {
		err = b.Flush()
	}
	if err != nil {
		w.backendError(r, err)
		return
	}
	w.send(w.simpleReply(r.handle, 0))
}

func (w *worker) backendError(r *request, err error) {
	e := errnoOf(err)
	w.c.srv.logf(slog.LevelWarn, "nbd: backend error", "remote", w.c.remote, "export", w.c.exp.Name,
		"command", r.typ, "offset", r.off, "length", r.length, "errno", uint32(e), "err", err)
	w.errorReply(r, e, err.Error())
}

// simpleReply builds a simple reply in w.out.
func (w *worker) simpleReply(handle uint64, e Errno) []byte {
	b := w.out[:simpleReplyLen]
	putSimpleReply(b, handle, e)
	return b
}

func putSimpleReply(b []byte, handle uint64, e Errno) {
	binary.BigEndian.PutUint32(b[0:], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:], uint32(e))
	binary.BigEndian.PutUint64(b[8:], handle)
}

func putChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], magicStructReply)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint32(b[16:], length)
}

// errorReply answers r with error e: a structured error chunk carrying msg
// when structured replies are on (required for READ), else a simple reply.
func (w *worker) errorReply(r *request, e Errno, msg string) {
	if !w.c.structured {
		w.send(w.simpleReply(r.handle, e))
		return
	}
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	n := chunkHeaderLen + 6 + len(msg)
	if cap(w.out) < n {
		w.out = make([]byte, n)
	}
	b := w.out[:n]
	putChunkHeader(b, replyFlagDone, replyTypeError, r.handle, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(b[20:], uint32(e))
	binary.BigEndian.PutUint16(b[24:], uint16(len(msg)))
	copy(b[26:], msg)
	w.send(b)
}

func (w *worker) read(r *request) {
	c := w.c
	n := int(r.length)
	if !c.structured {
		buf := getBuf(bufHeadroom + n)
		defer putBuf(buf)
		if n > 0 {
			if err := w.readAt((*buf)[bufHeadroom:], r.off); err != nil {
				w.backendError(r, err)
				return
			}
		}
		putSimpleReply((*buf)[bufHeadroom-simpleReplyLen:], r.handle, 0)
		w.send((*buf)[bufHeadroom-simpleReplyLen:])
		return
	}
	if n == 0 {
		b := w.out[:chunkHeaderLen]
		putChunkHeader(b, replyFlagDone, replyTypeNone, r.handle, 0)
		w.send(b)
		return
	}
	buf := getBuf(bufHeadroom + n)
	defer func() {
		if buf != nil {
			putBuf(buf)
		}
	}()
	data := (*buf)[bufHeadroom:]
	if r.flags&cmdFlagDF == 0 {
		runs, ok, err := w.sparseRead(data, r.off)
		if err != nil {
			w.backendError(r, err)
			return
		}
		if ok && len(runs) > 0 && (len(runs) > 1 || runs[0].state != 0) {
			w.sendChunks(r, data, runs)
			return
		}
	} else if err := w.readAt(data, r.off); err != nil {
		w.backendError(r, err)
		return
	}
	// One data chunk, its header in the headroom: one write, no copy.
	h := (*buf)[bufHeadroom-chunkHeaderLen-8 : bufHeadroom]
	putChunkHeader(h, replyFlagDone, replyTypeOffsetData, r.handle, uint32(8+n))
	binary.BigEndian.PutUint64(h[chunkHeaderLen:], uint64(r.off))
	reply := (*buf)[bufHeadroom-chunkHeaderLen-8:]
	if w == c.inline && c.sendBehind(buf, reply, r) {
		buf = nil // the sender puts it back
		w.handedOff = true
		return
	}
	w.send(reply)
}

func (w *worker) readAt(p []byte, off int64) error {
	n, err := w.c.exp.Backend.ReadAt(p, off)
	if err == nil && n < len(p) {
		err = fmt.Errorf("short read of %d bytes at %d: %w", n, off, EIO)
	}
	return err
}

// sparseRead fills data from off and finds its zero runs. ok is false when
// the runs are unknown or too many; data is filled either way.
func (w *worker) sparseRead(data []byte, off int64) (runs []run, ok bool, err error) {
	b := w.c.exp.Backend
	end := off + int64(len(data))
	if sr, isSparse := b.(SparseReader); isSparse {
		w.startRuns(off, end, true, maxReadChunks)
		if err := sr.ReadSparse(data, off, w.zeroFn); err != nil {
			return nil, false, err
		}
		if w.truncated || w.invalid {
			return nil, false, nil
		}
		// Complete the runs with the data after the last zero run.
		w.collect(w.cur, end-w.cur, 0)
		return w.runs, !w.truncated, nil
	}
	w.startRuns(off, end, true, maxReadChunks)
	bsErr := b.BlockStatus(off, int64(len(data)), w.collectFn)
	if bsErr != nil || w.truncated || w.invalid || w.cur != end {
		// Without a usable map, read everything as data.
		return nil, false, w.readAt(data, off)
	}
	for _, ru := range w.runs {
		if ru.state == 0 {
			if err := w.readAt(data[ru.off-off:ru.off-off+ru.length], ru.off); err != nil {
				return nil, false, err
			}
		}
	}
	return w.runs, true, nil
}

// sendChunks sends a READ reply of OFFSET_DATA and OFFSET_HOLE chunks, one
// per run, in a single vectored write. All data was read before, so no
// error can follow and the last chunk carries DONE.
func (w *worker) sendChunks(r *request, data []byte, runs []run) {
	const per = chunkHeaderLen + 12 // largest header: OFFSET_HOLE's
	if need := per * len(runs); cap(w.out) < need {
		w.out = make([]byte, need)
	}
	hdrs := w.out[:per*len(runs)]
	iov := w.iov[:0]
	for i, ru := range runs {
		var flags uint16
		if i == len(runs)-1 {
			flags = replyFlagDone
		}
		h := hdrs[i*per : (i+1)*per]
		if ru.state != 0 {
			putChunkHeader(h, flags, replyTypeOffsetHole, r.handle, 12)
			binary.BigEndian.PutUint64(h[20:], uint64(ru.off))
			binary.BigEndian.PutUint32(h[28:], uint32(ru.length))
			iov = append(iov, h[:per])
			continue
		}
		putChunkHeader(h, flags, replyTypeOffsetData, r.handle, uint32(8+ru.length))
		binary.BigEndian.PutUint64(h[20:], uint64(ru.off))
		rel := ru.off - r.off
		iov = append(iov, h[:chunkHeaderLen+8], data[rel:rel+ru.length])
	}
	w.iov = iov
	w.sendv(iov)
	clear(w.iov[:cap(w.iov)])
}

func (w *worker) blockStatus(r *request) {
	maxRuns := maxStatusExtents
	if r.flags&cmdFlagReqOne != 0 {
		maxRuns = 1
	}
	end := r.off + int64(r.length)
	w.startRuns(r.off, end, false, maxRuns)
	if err := w.c.exp.Backend.BlockStatus(r.off, int64(r.length), w.collectFn); err != nil {
		w.backendError(r, err)
		return
	}
	if len(w.runs) == 0 {
		w.backendError(r, fmt.Errorf("block status of [%d, %d): backend reported no extents: %w", r.off, end, EIO))
		return
	}
	n := chunkHeaderLen + 4 + 8*len(w.runs)
	if cap(w.out) < n {
		w.out = make([]byte, n)
	}
	b := w.out[:n]
	putChunkHeader(b, replyFlagDone, replyTypeBlockStatus, r.handle, uint32(n-chunkHeaderLen))
	binary.BigEndian.PutUint32(b[20:], blockStatusCtxID)
	for i, ru := range w.runs {
		binary.BigEndian.PutUint32(b[24+8*i:], uint32(ru.length))
		binary.BigEndian.PutUint32(b[28+8*i:], ru.state)
	}
	w.send(b)
}

// startRuns prepares collect for the range [off, end).
func (w *worker) startRuns(off, end int64, readMode bool, maxRuns int) {
	w.runs = w.runs[:0]
	w.cur, w.end = off, end
	w.readMode, w.maxRuns = readMode, maxRuns
	w.truncated, w.invalid = false, false
}

// collect receives one run from Backend.BlockStatus: it clips the run to
// [cur, end), merges it with the previous run of the same state, and
// stops after maxRuns runs. A gap in the backend's runs marks the
// collection invalid.
func (w *worker) collect(off, length int64, state uint32) bool {
	if w.truncated || w.invalid || w.cur >= w.end {
		return false
	}
	if length <= 0 {
		return true
	}
	end := off + length
	if off > w.cur || end < off {
		w.invalid = true
		return false
	}
	if end <= w.cur {
		return true
	}
	end = min(end, w.end)
	if w.readMode {
		state &= StateZero
	} else {
		state &= StateHole | StateZero
	}
	if k := len(w.runs); k > 0 && w.runs[k-1].state == state {
		w.runs[k-1].length += end - w.cur
	} else {
		if len(w.runs) == w.maxRuns {
			w.truncated = true
			return false
		}
		w.runs = append(w.runs, run{off: w.cur, length: end - w.cur, state: state})
	}
	w.cur = end
	return w.cur < w.end
}

// zeroRun receives a zero run from SparseReader.ReadSparse: the data
// before it and the run itself become runs.
func (w *worker) zeroRun(off, length int64) {
	if w.truncated || w.invalid || length <= 0 {
		return
	}
	if off < w.cur || off+length > w.end {
		w.invalid = true
		return
	}
	if off > w.cur {
		w.collect(w.cur, off-w.cur, 0)
	}
	w.collect(off, length, StateZero)
}
