package hibfile

import "hash/maphash"

// BelowIndex knows the content of the chain below's hibernate file
// without reading it: SaveChainIndexed asks it before reading the chain
// below, which for a stacked machine hibernate was most of the work
// (reading the lower snapshot's RAM back out of SQLite to compare).
type BelowIndex interface {
	// Same reports whether p, at off of the hibernate file, equals what
	// the chain below holds there; known is false when the index cannot
	// tell (then the chain below is read).
	Same(p []byte, off int64) (same, known bool)
}

// PageIndex is a BelowIndex built from content that was known to equal
// the chain below (a machine's RAM as a resume rebuilt it from the
// chain): a keyed 128-bit hash (hash/maphash with two random seeds of
// this process) of every page of [0, size). A guest cannot aim at a
// collision without the seeds, and a chance one (2^-128 per changed page)
// would not go unnoticed: the RAM digest a machine snapshot is saved with
// is computed from the RAM itself, and a resume refuses a hibernate file
// that does not match it.
type PageIndex struct {
	pageSize int64
	seeds    [2]maphash.Seed
	sums     [][2]uint64 // {0, 0}: a zero page
}

// NewPageIndex makes an index of size bytes in pages of pageSize, every
// page zero until Add says otherwise.
func NewPageIndex(size, pageSize int64) *PageIndex {
	return &PageIndex{
		pageSize: pageSize,
		seeds:    [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		sums:     make([][2]uint64, (size+pageSize-1)/pageSize),
	}
}

func (x *PageIndex) sum(page []byte) [2]uint64 {
	if isZero(page) {
		return [2]uint64{}
	}
	s := [2]uint64{maphash.Bytes(x.seeds[0], page), maphash.Bytes(x.seeds[1], page)}
	if s == [2]uint64{} {
		s[1] = 1 // {0, 0} means zero
	}
	return s
}

// Add records p, at off (page aligned; whole pages), as the content
// below.
func (x *PageIndex) Add(p []byte, off int64) {
	ps := x.pageSize
	for i := int64(0); i+ps <= int64(len(p)); i += ps {
		if n := (off + i) / ps; n < int64(len(x.sums)) {
			x.sums[n] = x.sum(p[i : i+ps])
		}
	}
}

// Same implements BelowIndex.
func (x *PageIndex) Same(p []byte, off int64) (same, known bool) {
	ps := x.pageSize
	if off%ps != 0 || int64(len(p))%ps != 0 || (off+int64(len(p)))/ps > int64(len(x.sums)) {
		return false, false
	}
	same = true
	for i := int64(0); i < int64(len(p)); i += ps {
		if x.sums[(off+i)/ps] != x.sum(p[i:i+ps]) {
			same = false
		}
	}
	return same, true
}
