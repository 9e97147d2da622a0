package hibfile

import (
	"errors"

	"github.com/hibdisk/hibdisk/disklayer"
)

// Errors, wrapped with the operation and the file.
var (
	// ErrNoSnapshot: no layer of the chain holds a hibernate snapshot.
	ErrNoSnapshot = errors.New("no hibernate snapshot")
	// ErrSnapshotExists: Save into a layer that already holds a snapshot
	// (one per layer: stack a new diff layer for the next one).
	ErrSnapshotExists = errors.New("layer already holds a hibernate snapshot")
	// ErrNoProcess: a query for a pid the snapshot does not hold.
	ErrNoProcess = errors.New("no such process in the snapshot")
	// ErrNeedsMigration: a layer opened read-only still has the seed's v0
	// hibernate tables; opening it writable once migrates them. It is
	// the layer contract's error (disklayer.ErrNeedsMigration, one text
	// for every package).
	ErrNeedsMigration = disklayer.ErrNeedsMigration
)
