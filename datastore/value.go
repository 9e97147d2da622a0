package datastore

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// ParseOptions say how ParseEntry reads a value.
type ParseOptions struct {
	// Hex reads a MEM value as hex digits instead of as text.
	Hex bool
	// ParseSize reads a MAP's OFFSET and LENGTH, so that a command line
	// can take its own size syntax (K/M/G suffixes); nil reads decimal
	// byte counts.
	ParseSize func(string) (int64, error)
}

// ParseEntry reads the text form of a typ value into an Entry with Key
// key (the owner is left to the caller):
//
//   - U32 and LABEL: a number from 0 to 4294967295 (strconv.ParseUint
//     base 0: decimal, 0x hex, 0o octal, 0b binary);
//   - STRING: the text itself;
//   - MEM: the text's bytes, or with opts.Hex the bytes of hex digits;
//   - MAP: SOURCE:OFFSET:LENGTH, SOURCE disk or hibernate (Publish
//     checks the range).
//
// The error names what does not parse; it is meant for the person who
// typed the value.
func ParseEntry(typ Type, key, value string, opts ParseOptions) (Entry, error) {
	e := Entry{Key: key, Type: typ}
	switch typ {
	case U32, Label:
		n, err := strconv.ParseUint(value, 0, 32)
		if err != nil {
			return Entry{}, fmt.Errorf("%s value %q: want a number from 0 to 4294967295", typ, value)
		}
		if typ == U32 {
			e.U32 = uint32(n)
		} else {
			e.Label = uint32(n)
		}
	case String:
		e.String = value
	case Mem:
		e.Mem = []byte(value)
		if opts.Hex {
			b, err := hex.DecodeString(value)
			if err != nil {
				return Entry{}, fmt.Errorf("mem value: %w", err)
			}
			e.Mem = b
		}
	case Map:
		m, err := parseMapRange(value, opts.ParseSize)
		if err != nil {
			return Entry{}, err
		}
		e.Map = &m
	}
	return e, nil
}

// parseMapRange parses SOURCE:OFFSET:LENGTH.
func parseMapRange(s string, parseSize func(string) (int64, error)) (MapRange, error) {
	if parseSize == nil {
		parseSize = func(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) }
	}
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return MapRange{}, fmt.Errorf("map value %q: want SOURCE:OFFSET:LENGTH", s)
	}
	off, err := parseSize(parts[1])
	if err != nil {
		return MapRange{}, fmt.Errorf("map offset: %w", err)
	}
	length, err := parseSize(parts[2])
	if err != nil {
		return MapRange{}, fmt.Errorf("map length: %w", err)
	}
	return MapRange{Source: MapSource(parts[0]), Offset: off, Length: length}, nil
}

// RetrieveValue retrieves the entry (key, typ) for owner, with its value
// bounded by maxLen bytes as a retrieve into a buffer of that size is
// (see the package doc):
//
//   - a STRING longer than maxLen is refused with ErrTooSmall, never cut;
//   - a MEM's bytes, cut to maxLen, are returned as data (and stay whole
//     in the entry);
//   - a MAP's range is read now (or its snapshot, when snapshot is not
//     0), at most maxLen bytes of it, into data;
//   - other types return no data.
func RetrieveValue(ds API, key string, typ Type, owner string, maxLen, snapshot int) (e Entry, data []byte, err error) {
	e, err = ds.Retrieve(key, typ, owner)
	if err != nil {
		return Entry{}, nil, err
	}
	switch typ {
	case String:
		if len(e.String) > maxLen {
			return Entry{}, nil, fmt.Errorf("retrieve string %q: %d bytes, the bound is %d: %w", key, len(e.String), maxLen, ErrTooSmall)
		}
	case Mem:
		data = e.Mem[:min(len(e.Mem), maxLen)]
	case Map:
		buf := make([]byte, min(int64(maxLen), e.Map.Length))
		n, _, err := ds.RetrieveMap(key, owner, buf, snapshot)
		if err != nil {
			return Entry{}, nil, err
		}
		data = buf[:n]
	}
	return e, data, nil
}
