package datastore

import (
	"fmt"
	"strings"
)

// Type is an entry's type.
type Type string

// The five entry types.
const (
	U32    Type = "u32"
	String Type = "string"
	Mem    Type = "mem"
	Map    Type = "map"
	Label  Type = "label"
)

// Types lists every type, in the order listings use.
var Types = []Type{U32, String, Mem, Map, Label}

// ParseType accepts a type name in any case.
func ParseType(s string) (Type, error) {
	t := Type(strings.ToLower(s))
	if !t.valid() {
		return "", fmt.Errorf("type %q: want u32, string, mem, map or label", s)
	}
	return t, nil
}

func (t Type) valid() bool {
	switch t {
	case U32, String, Mem, Map, Label:
		return true
	}
	return false
}

// Flags modify Publish and Subscribe.
type Flags uint

const (
	// Overwrite replaces an existing entry (Publish) or subscription
	// (Subscribe). MINIX DSF_OVERWRITE.
	Overwrite Flags = 1 << iota
	// Private keeps other owners from retrieving, overwriting,
	// subscribing to or snapshotting the entry. MINIX DSF_PRIV_*.
	Private
	// Initial makes Subscribe report every existing match at once.
	// MINIX DSF_INITIAL.
	Initial
)

// MaxKeyLen is the longest key in bytes (MINIX: DS_MAX_KEYLEN 80 with the
// terminating NUL).
const MaxKeyLen = 79

// MaxValueLen bounds STRING and MEM values, MAP ranges and so snapshots:
// the datastore is for small pieces of state, which a retrieve copies
// into memory.
const MaxValueLen = 16 << 20

// MapSource names the file a MAP entry refers to.
type MapSource string

// The files a MAP can refer to.
const (
	SourceDisk      MapSource = "disk"      // the chain's disk
	SourceHibernate MapSource = "hibernate" // the chain's hibernate file
)

// MapRange is what a MAP entry publishes: Length bytes at Offset of
// Source.
type MapRange struct {
	Source MapSource `json:"source"`
	Offset int64     `json:"offset"`
	Length int64     `json:"length"`
}

// Entry is a resolved entry. Exactly the value field of its Type is set;
// a listing leaves the value of another owner's private entry empty.
type Entry struct {
	Key     string    `json:"key"`
	Type    Type      `json:"type"`
	Owner   string    `json:"owner"`
	Private bool      `json:"private"`
	U32     uint32    `json:"u32,omitempty"`
	String  string    `json:"string,omitempty"`
	Mem     []byte    `json:"mem,omitempty"`
	Map     *MapRange `json:"map,omitempty"`
	Label   uint32    `json:"label,omitempty"`
	// Snapshots is the number of a MAP entry's newest snapshot (0: none).
	Snapshots int `json:"snapshots,omitempty"`
	// Depth is the depth of the layer that supplies the entry (0: top).
	Depth int `json:"depth"`
	// ChangedAt is when the entry was last published (RFC 3339, UTC).
	ChangedAt string `json:"changed_at"`
}

// Change is what Check reports: an entry that changed since the
// subscriber's last Check.
type Change struct {
	Key     string `json:"key"`
	Type    Type   `json:"type"`
	Owner   string `json:"owner"`
	Deleted bool   `json:"deleted,omitempty"`
}

// Subscription is a subscriber's stored subscription.
type Subscription struct {
	Owner   string `json:"owner"`
	Pattern string `json:"pattern"`
	Types   []Type `json:"types"` // empty: every type
	Cursor  int64  `json:"cursor"`
}
