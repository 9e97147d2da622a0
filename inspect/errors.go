package inspect

import (
	"errors"
	"io/fs"
)

// Errors returned (wrapped) by this package, tested with errors.Is.
var (
	// ErrNoFilesystem: the partition or disk holds no filesystem this
	// package recognises.
	ErrNoFilesystem = errors.New("no recognisable filesystem")
	// ErrNoPartition: the partition index is not in the table, or the
	// disk has no partition table.
	ErrNoPartition = errors.New("no such partition")
	// ErrCorrupt: a filesystem was recognised by its magic number but its
	// superblock or metadata does not parse.
	ErrCorrupt = errors.New("corrupt filesystem")
	// ErrNotExist: the path does not exist in the filesystem. It is
	// fs.ErrNotExist, so os.IsNotExist-style checks work.
	ErrNotExist = fs.ErrNotExist
	// ErrNotDir: a directory operation on something that is not one.
	ErrNotDir = errors.New("not a directory")
	// ErrIsDir: a file operation on a directory.
	ErrIsDir = errors.New("is a directory")
)
