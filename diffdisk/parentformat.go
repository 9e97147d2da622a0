package diffdisk

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hibdisk/hibdisk/disklayer"
)

// A ParentFormat opens parents whose layers come from elsewhere than a
// file beside the child: a chain pushed to an object store (package
// remote registers disklayer.FormatS3). diffdisk cannot import the
// packages that read them (they import diffdisk), so they register here,
// as checks do with RegisterCheck; a binary that does not link such a
// package refuses chains whose parent has its format, in one error.
type ParentFormat struct {
	// Attach resolves what `create -b BACKING` names into the reference
	// a new child records, opening the parent's layers as Open would
	// (so a child is never made over a parent that does not open).
	Attach func(backing string, opts AttachOptions) (disklayer.ParentRef, *StoreParent, error)
	// Open opens the layers a child's reference names, top first, each
	// verified against the reference and against each other. The chain
	// ends with them: their own parent references are not followed.
	Open func(ref disklayer.ParentRef, opts ParentOptions) (*StoreParent, error)
}

// AttachOptions are what `create` passes to ParentFormat.Attach.
type AttachOptions struct {
	// Endpoint is the store's URL when it is not the SDK's default
	// (create --endpoint).
	Endpoint string
}

// ParentOptions are what an open passes to ParentFormat.Open.
type ParentOptions struct {
	// MaxWait is how long reads wait for a store that does not answer
	// before they fail with EIO (Options.ReconnectDelay: 0 fails at
	// once after one try).
	MaxWait time.Duration
	// Strict opens the layers in strict mode (Options.Strict).
	Strict bool
}

// StoreParent is a parent chain opened by a ParentFormat.
type StoreParent struct {
	// Layers are read-only, top first; closing them closes what reads
	// them.
	Layers []disklayer.Layer
	// Names name each layer in errors and in Layers (its LayerInfo.Path).
	Names []string
	// URL names the parent as the child records it.
	URL string
	// Counters reports what reading the layers has cost so far.
	Counters func() StoreCounters
}

// StoreCounters count what a parent read from a store cost: what its
// layers were asked for, what came from the store and from the
// machine's cache.
type StoreCounters struct {
	Reads     int64 // reads of the layers' bytes (SQLite pages)
	ReadBytes int64
	// FetchedChunks and FetchedBytes came from the store, verified;
	// GETs counts the requests for them, failed ones included.
	FetchedChunks int64
	FetchedBytes  int64
	GETs          int64
	CacheHits     int64 // chunks found in the machine's cache
	Retries       int64
}

var (
	parentFormatsMu sync.Mutex
	parentFormats   = map[string]ParentFormat{}
)

// RegisterParentFormat makes chains whose parent has format name open
// (and `create -b` attach to one) through f. Packages call it from init.
func RegisterParentFormat(name string, f ParentFormat) {
	parentFormatsMu.Lock()
	defer parentFormatsMu.Unlock()
	parentFormats[name] = f
}

// registeredParentFormat returns the ParentFormat of name, or an error
// saying this build cannot open it.
func registeredParentFormat(name string) (ParentFormat, error) {
	parentFormatsMu.Lock()
	defer parentFormatsMu.Unlock()
	f, ok := parentFormats[name]
	if !ok {
		return ParentFormat{}, fmt.Errorf("this build has no opener for %s parents (a program that links package remote opens them; hibdisk does): %w", name, disklayer.ErrInvalid)
	}
	return f, nil
}

// isStoreFormat reports whether format's layers come from a store (a
// registered ParentFormat or one that ought to be).
func isStoreFormat(format string) bool { return format == disklayer.FormatS3 }

// isStoreURL reports whether backing names a parent in a store.
func isStoreURL(backing string) bool { return strings.HasPrefix(backing, "s3://") }

// openStoreParent opens the store parent ref names for the chain of
// child.
func openStoreParent(ref disklayer.ParentRef, opts Options) (*StoreParent, error) {
	f, err := registeredParentFormat(ref.Format)
	if err != nil {
		return nil, err
	}
	wait := opts.ReconnectDelay
	if wait == 0 {
		wait = DefaultReconnectDelay
	}
	sp, err := f.Open(ref, ParentOptions{MaxWait: max(wait, 0), Strict: opts.Strict})
	if err != nil {
		return nil, err
	}
	if len(sp.Layers) == 0 || len(sp.Names) != len(sp.Layers) {
		closeLayers(sp.Layers)
		return nil, fmt.Errorf("%s parent %s opened as %d layers with %d names: %w", ref.Format, ref.Path, len(sp.Layers), len(sp.Names), disklayer.ErrInvalid)
	}
	return sp, nil
}

// attachStoreParent opens the store parent backing names for a new child.
func attachStoreParent(backing, format, endpoint string) (*Disk, *disklayer.ParentRef, error) {
	if format == "" {
		format = disklayer.FormatS3
	}
	if format != disklayer.FormatS3 {
		return nil, nil, fmt.Errorf("backing file %q is an s3:// URL: say -F s3, or nothing: %w", backing, disklayer.ErrInvalid)
	}
	f, err := registeredParentFormat(format)
	if err != nil {
		return nil, nil, err
	}
	ref, sp, err := f.Attach(backing, AttachOptions{Endpoint: endpoint})
	if err != nil {
		return nil, nil, err
	}
	d, err := composeStore(Options{ReadOnly: true}, nil, nil, sp)
	if err != nil {
		closeLayers(sp.Layers)
		return nil, nil, err
	}
	return d, &ref, nil
}

// composeStore composes layers and metas with the store parent's layers
// below them.
func composeStore(opts Options, layers []disklayer.Layer, metas []layerMeta, sp *StoreParent) (*Disk, error) {
	layers = append(layers, sp.Layers...)
	for _, name := range sp.Names {
		metas = append(metas, layerMeta{path: name, format: disklayer.FormatS3})
	}
	d, err := compose(opts, layers, metas)
	if err != nil {
		return nil, err
	}
	d.stores = append(d.stores, sp)
	return d, nil
}

// StoreBase is what one parent read from a store has cost so far.
type StoreBase struct {
	URL string
	StoreCounters
}

// StoreBases lists the chain's parents read from a store, with their
// counters.
func (d *Disk) StoreBases() []StoreBase {
	var out []StoreBase
	for _, sp := range d.stores {
		out = append(out, StoreBase{URL: sp.URL, StoreCounters: sp.Counters()})
	}
	return out
}

// GuestReads counts the reads of the chain's view (ReadAt) and their
// bytes since it was opened: what a guest read through an export.
func (d *Disk) GuestReads() (reads, bytes int64) {
	return d.reads.Load(), d.readBytes.Load()
}
