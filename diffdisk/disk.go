package diffdisk

import (
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
)

// Options says how a chain is opened or composed.
type Options struct {
	// ReadOnly opens the top read-only too; writes return ErrReadOnly.
	ReadOnly bool
	// ReadCache makes reads copy what they find below into the top
	// (disklayer.ReadCacher.FillAbsent), so later reads stay in the top.
	// It needs a writable top that implements ReadCacher.
	ReadCache bool
	// Strict opens every SQLite layer in strict mode (see
	// sqlitelayer.OpenOptions).
	Strict bool
	// WriteBack opens the top with sqlitelayer.OpenOptions.WriteBack.
	WriteBack bool
	// HoldStable holds a read-only top so that no other process may write
	// it while it is open (sqlitelayer.OpenOptions.HoldStable); the lower
	// layers are always held so.
	HoldStable bool
	// ReconnectDelay is how long reads wait for a lost NBD server of a
	// remote base to come back before they fail with EIO: 0 means
	// DefaultReconnectDelay, a negative value not at all.
	ReconnectDelay time.Duration
}

// Disk is a stack of layers [top, ..., base] that reads like one disk
// and writes to its top. It implements disklayer.Disk and is safe for
// concurrent use when its layers are.
type Disk struct {
	layers []disklayer.Layer     // [top, ..., base]
	owners []disklayer.OwnReader // layers[i] as an OwnReader, or nil
	meta   []layerMeta           // parallel to layers: where each came from
	top    disklayer.Disk        // nil when the Disk is read-only
	cacher disklayer.ReadCacher  // non-nil in read-cache mode

	size       int64
	sectorSize int64
	name       string // names the Disk in errors: the top's path, or "stack"
	// snap is set when a lower layer has smaller sectors than the top, so
	// its extent boundaries must be widened to the top's sectors.
	snap bool

	rmw    sync.Mutex // serialises partial-sector read-modify-writes
	closed atomic.Bool

	indexOnce sync.Once
	index     *chainIndex
	noIndex   bool // tests set it to exercise the layer-by-layer walk
	// regionBytes overrides the package's regionBytes (tests: many
	// regions on a small disk).
	regionBytes int64

	// stores are the parents read from a store (ParentFormat), for
	// StoreBases.
	stores []*StoreParent
	// reads and readBytes count ReadAt calls (GuestReads).
	reads, readBytes atomic.Int64
}

// layerMeta records what a layer is, for Layers and error messages.
type layerMeta struct {
	path   string // "" for a layer handed to New without a file
	format string // "hibdisk", "raw", or "" when unknown
}

// The abilities a Disk has.
var _ disklayer.Disk = (*Disk)(nil)

// New stacks layers, top first, into a writable Disk. The top must be a
// disklayer.Disk. The lower layers must not change while the Disk is
// open; Close closes every layer that is an io.Closer.
func New(layers ...disklayer.Layer) (*Disk, error) {
	return Compose(Options{}, layers...)
}

// Compose stacks layers, top first, with opts (Strict is ignored: the
// layers are already open). A writable Disk needs a top that is a
// disklayer.Disk; read-cache mode needs one that is also a
// disklayer.ReadCacher.
func Compose(opts Options, layers ...disklayer.Layer) (*Disk, error) {
	metas := make([]layerMeta, len(layers))
	return compose(opts, layers, metas)
}

func compose(opts Options, layers []disklayer.Layer, metas []layerMeta) (*Disk, error) {
	if len(layers) == 0 {
		return nil, fmt.Errorf("compose stack: no layers: %w", disklayer.ErrInvalid)
	}
	d := &Disk{
		layers:     layers,
		owners:     make([]disklayer.OwnReader, len(layers)),
		meta:       metas,
		size:       layers[0].Size(),
		sectorSize: int64(layers[0].SectorSize()),
		name:       "stack",
	}
	if metas[0].path != "" {
		d.name = metas[0].path
	}
	for i, l := range layers {
		if l == nil {
			return nil, fmt.Errorf("compose %s: layer %d is nil: %w", d.name, i, disklayer.ErrInvalid)
		}
		d.owners[i], _ = l.(disklayer.OwnReader)
		if int64(l.SectorSize()) < d.sectorSize {
			d.snap = true
		}
	}
	if !opts.ReadOnly {
		top, ok := layers[0].(disklayer.Disk)
		if !ok {
			return nil, fmt.Errorf("compose %s: top layer %T is not writable (compose read-only instead): %w", d.name, layers[0], disklayer.ErrInvalid)
		}
		d.top = top
	}
	if opts.ReadCache {
		cacher, ok := layers[0].(disklayer.ReadCacher)
		if d.top == nil || !ok {
			return nil, fmt.Errorf("compose %s: read-cache mode needs a writable top layer that can fill absent sectors: %w", d.name, disklayer.ErrInvalid)
		}
		d.cacher = cacher
	}
	return d, nil
}

// Size is the top layer's size in bytes.
func (d *Disk) Size() int64 { return d.size }

// SectorSize is the top layer's sector size: the unit of writes and of
// read-modify-write.
func (d *Disk) SectorSize() int { return int(d.sectorSize) }

// ReadOnly reports whether writes are refused.
func (d *Disk) ReadOnly() bool { return d.top == nil }

// Depth is the number of layers.
func (d *Disk) Depth() int { return len(d.layers) }

// Layer returns the layer at depth i (0 is the top).
func (d *Disk) Layer(i int) disklayer.Layer { return d.layers[i] }

// check validates an access and reports a closed Disk.
func (d *Disk) check(op string, off, length int64) error {
	if d.closed.Load() {
		return fmt.Errorf("%s %s: %w", op, d.name, disklayer.ErrClosed)
	}
	if err := disklayer.CheckRange(off, length, d.size); err != nil {
		return fmt.Errorf("%s %s: %w", op, d.name, err)
	}
	return nil
}

// checkWrite is check for operations that change the top.
func (d *Disk) checkWrite(op string, off, length int64) error {
	if d.closed.Load() {
		return fmt.Errorf("%s %s: %w", op, d.name, disklayer.ErrClosed)
	}
	if d.top == nil {
		return fmt.Errorf("%s %s: %w", op, d.name, disklayer.ErrReadOnly)
	}
	return d.check(op, off, length)
}

// ReadAt reads the chain's view of [off, off+len(p)).
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	d.reads.Add(1)
	d.readBytes.Add(int64(len(p)))
	if err := d.read(p, off, d.cacher != nil); err != nil {
		return 0, fmt.Errorf("read %s at %d: %w", d.name, off, err)
	}
	return len(p), nil
}

// read fills p with the chain's view at off; fill says whether to copy
// what comes from below into the top (read-cache mode).
func (d *Disk) read(p []byte, off int64, fill bool) error {
	if len(d.layers) == 1 {
		_, err := d.layers[0].ReadAt(p, off)
		return err
	}
	ix, err := d.chainIndex()
	if err != nil {
		return err
	}
	if ix != nil && ix.from == 0 {
		return d.readFrom(ix, 0, p, off)
	}
	if ix != nil && ix.held != nil {
		// The top's bits of a region are trusted once it is indexed.
		if err := ix.ensure(off, off+int64(len(p))); err != nil {
			return err
		}
		return d.readHeld(ix, p, off, fill)
	}
	return d.readLayer(ix, 0, p, off, func(q []byte, at int64) error {
		return d.readBelowTop(ix, q, at, fill)
	})
}

// readHeld reads through the top-sector bitmap: each run of sectors the
// top may hold is one top read, each run it does not hold goes below.
// Reading run by run costs a query per run, but every query reads only
// rows that are used: reading a whole range from each layer instead reads
// the hidden rows too, and measured slower (BenchmarkChain3SeqRead1M).
func (d *Disk) readHeld(ix *chainIndex, p []byte, off int64, fill bool) error {
	ss := d.sectorSize
	end := off + int64(len(p))
	for pos := off; pos < end; {
		held := ix.held.get(pos / ss)
		next := (pos/ss + 1) * ss
		for next < end && ix.held.get(next/ss) == held {
			next += ss
		}
		next = min(next, end)
		q := p[pos-off : next-off]
		var err error
		if held {
			_, err = d.layers[0].ReadAt(q, pos)
		} else {
			err = d.readBelowTop(ix, q, pos, fill)
		}
		if err != nil {
			return err
		}
		pos = next
	}
	return nil
}

// readBelowTop reads a range the top does not hold from the layers below
// it and, in read-cache mode, stores it in the top.
func (d *Disk) readBelowTop(ix *chainIndex, p []byte, off int64, fill bool) error {
	if err := d.readFrom(ix, 1, p, off); err != nil {
		return err
	}
	if !fill {
		return nil
	}
	return d.cacheFill(ix, p, off)
}

// cacheFill stores p, the lower view at off of a range the top does not
// hold, into the top. FillAbsent takes whole sectors: the partial sectors
// at the ends are completed from below (the top holds nothing in them
// either, since extents and the bitmap are per sector). FillAbsent never
// overwrites a sector the top holds, so a write that raced this read wins.
func (d *Disk) cacheFill(ix *chainIndex, p []byte, off int64) error {
	ss := d.sectorSize
	end := off + int64(len(p))
	first, last := off/ss*ss, (end+ss-1)/ss*ss
	sectors := p
	if first != off || last != end {
		sectors = make([]byte, last-first)
		copy(sectors[off-first:], p)
		if first < off {
			if err := d.readFrom(ix, 1, sectors[:off-first], first); err != nil {
				return err
			}
		}
		if end < last {
			if err := d.readFrom(ix, 1, sectors[end-first:], end); err != nil {
				return err
			}
		}
	}
	if err := d.cacher.FillAbsent(sectors, first); err != nil {
		return fmt.Errorf("fill read cache: %w", err)
	}
	if ix != nil && ix.held != nil {
		ix.held.set(first/ss, last/ss)
	}
	return nil
}

// readFrom fills p with the view of the chain from depth down: through
// the index's runs where they cover it, layer by layer elsewhere.
func (d *Disk) readFrom(ix *chainIndex, depth int, p []byte, off int64) error {
	below := func(q []byte, at int64) error { return d.readFrom(ix, depth+1, q, at) }
	if ix == nil || depth < ix.from || depth == len(d.layers) {
		return d.readLayer(ix, depth, p, off, below)
	}
	return ix.each(off, off+int64(len(p)), func(r *indexRegion, from, to int64) error {
		q := p[from-off : to-off]
		if r.ok {
			return d.readRuns(r, q, from)
		}
		return d.readLayer(ix, depth, q, from, below)
	})
}

// readLayer fills p from the layer at depth, calling below for every run
// the layer does not store. Past the layer's end the view is zeros.
func (d *Disk) readLayer(ix *chainIndex, depth int, p []byte, off int64, below func(q []byte, at int64) error) error {
	if depth == len(d.layers) {
		clear(p)
		return nil
	}
	l := d.layers[depth]
	if n := l.Size() - off; n < int64(len(p)) {
		n = max(n, 0)
		clear(p[n:])
		p = p[:n]
		if n == 0 {
			return nil
		}
	}
	if owner := d.owners[depth]; owner != nil {
		return owner.ReadOwn(p, off, func(at, length int64) error {
			return below(p[at-off:at-off+length], at)
		})
	}
	for e, err := range l.Extents(off, int64(len(p))) {
		if err != nil {
			return err
		}
		q := p[e.Off-off : e.End()-off]
		switch e.Kind {
		case disklayer.Absent:
			err = below(q, e.Off)
		case disklayer.Zero:
			clear(q)
		default:
			_, err = l.ReadAt(q, e.Off)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readRuns fills p, inside region ir, from the index of the immutable
// layers: each run from the layer that supplies it, zeros elsewhere.
func (d *Disk) readRuns(ir *indexRegion, p []byte, off int64) error {
	end := off + int64(len(p))
	pos := off
	for i := ir.firstRun(off); i < len(ir.runs) && ir.runs[i].off < end; i++ {
		r := ir.runs[i]
		from, to := max(r.off, off), min(r.end, end)
		clear(p[pos-off : from-off])
		q := p[from-off : to-off]
		if r.kind == disklayer.Data {
			if _, err := d.layers[r.depth].ReadAt(q, from); err != nil {
				return err
			}
		} else {
			clear(q)
		}
		pos = to
	}
	clear(p[pos-off:])
	return nil
}

// WriteAt writes p at off into the top. Partial sectors at either end are
// merged with the chain's view of them first.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if err := d.checkWrite("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	err := d.modify(off, int64(len(p)),
		func(ix *chainIndex, at, length int64) error {
			if _, err := d.top.WriteAt(p[at-off:at-off+length], at); err != nil {
				return err
			}
			d.markHeld(ix, at, at+length)
			return nil
		},
		func(sector []byte, at int64) {
			copy(sector, p[at-off:])
		})
	if err != nil {
		return 0, fmt.Errorf("write %s at %d: %w", d.name, off, err)
	}
	return len(p), nil
}

// Zero makes [off, off+length) read as zeros: whole sectors become
// tombstones in the top; partial sectors are read-modify-written through
// the chain.
func (d *Disk) Zero(off, length int64) error {
	if err := d.checkWrite("zero", off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	err := d.modify(off, length, d.zeroShown,
		func(sector []byte, at int64) {
			clear(sector[:min(int64(len(sector)), off+length-at)])
		})
	if err != nil {
		return fmt.Errorf("zero %s at %d length %d: %w", d.name, off, length, err)
	}
	return nil
}

// zeroShown zeroes the whole sectors of [off, off+length) that could read
// as anything but zeros: those the top may hold and those where a lower
// layer has data. Everywhere else the chain reads zeros already, and a
// tombstone would be a row that hides nothing; skipping those sectors
// makes trimming a fresh diff layer nearly free (BenchmarkChain3Zero1M).
// Without a complete index every sector gets its tombstone.
func (d *Disk) zeroShown(ix *chainIndex, off, length int64) error {
	zeroAll := func(off, end int64) error {
		if err := d.top.Zero(off, end-off); err != nil {
			return err
		}
		d.markHeld(ix, off, end)
		return nil
	}
	if ix == nil || ix.held == nil {
		return zeroAll(off, off+length)
	}
	ss := d.sectorSize
	return ix.each(off, off+length, func(r *indexRegion, off, end int64) error {
		if !r.ok {
			return zeroAll(off, end)
		}
		shown := func(s int64) bool {
			if ix.held.get(s / ss) {
				return true
			}
			for i := r.firstRun(s); i < len(r.runs) && r.runs[i].off < s+ss; i++ {
				if r.runs[i].kind == disklayer.Data {
					return true
				}
			}
			return false
		}
		for s := off; s < end; {
			if !shown(s) {
				s += ss
				continue
			}
			runEnd := s + ss
			for runEnd < end && shown(runEnd) {
				runEnd += ss
			}
			if err := zeroAll(s, runEnd); err != nil {
				return err
			}
			s = runEnd
		}
		return nil
	})
}

// markHeld records in the index that the top may now hold the sectors of
// [from, to).
func (d *Disk) markHeld(ix *chainIndex, from, to int64) {
	if ix != nil && ix.held != nil {
		ix.held.set(from/d.sectorSize, (to+d.sectorSize-1)/d.sectorSize)
	}
}

// modify changes [off, off+length) in the top: whole sectors through
// aligned (which receives a sector-aligned sub-range and records what it
// wrote with markHeld), partial sectors by reading the sector through the
// chain, applying change to the part from the range's start in that
// sector on, and writing the sector back.
func (d *Disk) modify(off, length int64, aligned func(ix *chainIndex, at, length int64) error, change func(sector []byte, at int64)) error {
	ix, err := d.chainIndex()
	if err != nil {
		return err
	}
	if len(d.layers) == 1 {
		// Nothing below: the layer's own read-modify-write is the chain's.
		return aligned(ix, off, length)
	}
	ss := d.sectorSize
	end := off + length
	if off%ss == 0 && end%ss == 0 {
		return aligned(ix, off, length)
	}

	d.rmw.Lock()
	defer d.rmw.Unlock()
	partial := func(at int64) error {
		sector := make([]byte, ss)
		base := at / ss * ss
		if err := d.read(sector, base, false); err != nil {
			return err
		}
		change(sector[at-base:], at)
		if _, err := d.top.WriteAt(sector, base); err != nil {
			return err
		}
		d.markHeld(ix, base, base+ss)
		return nil
	}
	pos := off
	if pos%ss != 0 || end-pos < ss {
		if err := partial(pos); err != nil {
			return err
		}
		pos = min(pos/ss*ss+ss, end)
	}
	if middleEnd := end / ss * ss; middleEnd > pos {
		if err := aligned(ix, pos, middleEnd-pos); err != nil {
			return err
		}
		pos = middleEnd
	}
	if pos < end {
		return partial(pos)
	}
	return nil
}

// Flush makes every completed write durable in the top layer.
func (d *Disk) Flush() error {
	if d.closed.Load() {
		return fmt.Errorf("flush %s: %w", d.name, disklayer.ErrClosed)
	}
	if d.top == nil {
		return nil
	}
	if err := d.top.Flush(); err != nil {
		return fmt.Errorf("flush %s: %w", d.name, err)
	}
	return nil
}

// Close flushes the top and closes every layer that is an io.Closer,
// top first. Later calls return ErrClosed.
func (d *Disk) Close() error {
	if d.closed.Swap(true) {
		return fmt.Errorf("close %s: %w", d.name, disklayer.ErrClosed)
	}
	return closeLayers(d.layers)
}

// closeLayers closes every layer that is an io.Closer and joins the
// errors.
func closeLayers(layers []disklayer.Layer) error {
	var errs []error
	for _, l := range layers {
		if c, ok := l.(io.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Extents yields the chain's allocation of [off, off+length): Data where
// some layer supplies bytes, Zero where the topmost layer that says
// anything holds a tombstone, Absent where no layer stores anything (or a
// layer above ended). Boundaries are aligned to the top's sectors.
func (d *Disk) Extents(off, length int64) iter.Seq2[disklayer.Extent, error] {
	return func(yield func(disklayer.Extent, error) bool) {
		if err := d.check("extents", off, length); err != nil {
			yield(disklayer.Extent{}, err)
			return
		}
		if length == 0 {
			return
		}
		m := &extentMerger{yield: yield}
		emit := m.add
		if d.snap {
			s := &sectorSnapper{ss: d.sectorSize, lo: off, hi: off + length, out: m.add}
			emit = s.add
		}
		err := d.extents(off, length, emit)
		if err == nil {
			err = m.finish()
		}
		if err != nil && !errors.Is(err, errStopped) {
			yield(disklayer.Extent{}, fmt.Errorf("extents %s at %d length %d: %w", d.name, off, length, err))
		}
	}
}

// errStopped ends an extent walk whose consumer stopped iterating.
var errStopped = errors.New("iteration stopped")

// extents emits the chain's extents of a valid, non-empty range in order,
// not necessarily merged.
func (d *Disk) extents(off, length int64, emit func(disklayer.Extent) error) error {
	ix, err := d.chainIndex()
	if err != nil {
		return err
	}
	return d.extentsFrom(ix, 0, off, length, emit)
}

func (d *Disk) extentsFrom(ix *chainIndex, depth int, off, length int64, emit func(disklayer.Extent) error) error {
	if depth == len(d.layers) {
		return emit(disklayer.Extent{Off: off, Len: length, Kind: disklayer.Absent})
	}
	if ix == nil || depth < ix.from {
		return d.extentsWalk(ix, depth, off, length, emit)
	}
	return ix.each(off, off+length, func(r *indexRegion, from, to int64) error {
		if r.ok {
			return r.runExtents(from, to-from, emit)
		}
		return d.extentsWalk(ix, depth, from, to-from, emit)
	})
}

// extentsWalk is extentsFrom for the layer at depth itself, asking the
// layers below for what it does not store.
func (d *Disk) extentsWalk(ix *chainIndex, depth int, off, length int64, emit func(disklayer.Extent) error) error {
	l := d.layers[depth]
	end := off + length
	if size := l.Size(); end > size {
		if off >= size {
			return emit(disklayer.Extent{Off: off, Len: length, Kind: disklayer.Absent})
		}
		if err := d.extentsWalk(ix, depth, off, size-off, emit); err != nil {
			return err
		}
		return emit(disklayer.Extent{Off: size, Len: end - size, Kind: disklayer.Absent})
	}
	// Collect first: recursing while the layer's iterator is open would
	// hold its statement (or lock) across the lower layers' queries.
	var own []disklayer.Extent
	for e, err := range l.Extents(off, length) {
		if err != nil {
			return err
		}
		own = append(own, e)
	}
	for _, e := range own {
		var err error
		if e.Kind == disklayer.Absent {
			err = d.extentsFrom(ix, depth+1, e.Off, e.Len, emit)
		} else {
			err = emit(e)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// extentMerger merges adjacent extents of one kind and yields them.
type extentMerger struct {
	yield func(disklayer.Extent, error) bool
	cur   disklayer.Extent
	has   bool
}

func (m *extentMerger) add(e disklayer.Extent) error {
	if m.has && m.cur.Kind == e.Kind && m.cur.End() == e.Off {
		m.cur.Len += e.Len
		return nil
	}
	if m.has && !m.yield(m.cur, nil) {
		return errStopped
	}
	m.cur, m.has = e, true
	return nil
}

func (m *extentMerger) finish() error {
	if m.has && !m.yield(m.cur, nil) {
		return errStopped
	}
	m.has = false
	return nil
}

// sectorSnapper widens extents to whole sectors of ss bytes within
// [lo, hi): a sector that several extents share takes the strongest kind
// among them (Data over Zero over Absent), which keeps every extent
// truthful: Absent and Zero ranges still read as zeros.
type sectorSnapper struct {
	ss, lo, hi int64
	out        func(disklayer.Extent) error

	pending     bool // a sector is partly seen
	pendingSec  int64
	pendingKind disklayer.ExtentKind
}

func (s *sectorSnapper) add(e disklayer.Extent) error {
	for pos, end := e.Off, e.End(); pos < end; {
		sec := pos / s.ss
		secStart, secEnd := max(sec*s.ss, s.lo), min((sec+1)*s.ss, s.hi)
		if pos == secStart && end >= secEnd {
			// Whole sectors: pass them on in one piece.
			wholeEnd := end / s.ss * s.ss
			if end == s.hi {
				wholeEnd = end
			}
			if err := s.out(disklayer.Extent{Off: pos, Len: wholeEnd - pos, Kind: e.Kind}); err != nil {
				return err
			}
			pos = wholeEnd
			continue
		}
		pieceEnd := min(end, secEnd)
		if s.pending && s.pendingSec == sec {
			s.pendingKind = max(s.pendingKind, e.Kind)
		} else {
			s.pending, s.pendingSec, s.pendingKind = true, sec, e.Kind
		}
		if pieceEnd == secEnd {
			s.pending = false
			if err := s.out(disklayer.Extent{Off: secStart, Len: secEnd - secStart, Kind: s.pendingKind}); err != nil {
				return err
			}
		}
		pos = pieceEnd
	}
	return nil
}
