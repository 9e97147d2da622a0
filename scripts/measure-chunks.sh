#!/usr/bin/env bash
# Bytes a lazy remote base fetches for the bytes a guest reads, per chunk
# size (docs/remote-work.md, "Measured"). Makes an ext4 image of real
# files (Go's source tree and tools, mke2fs -d), converts it with
# `hibdisk convert`, seals the layer as `hibdisk seal` does (VACUUM INTO,
# journal_mode=DELETE, read_only=1), lists every file's blocks (debugfs),
# then runs BenchmarkChunkSizes (disklayer/sqlitelayer) over it.
#
#   MEASURE_DIR=/var/tmp/hibdisk-chunks (kept between runs; delete it to rebuild)
#   MEASURE_BENCH=pages (only the page-granular rows; a sub-benchmark pattern)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${MEASURE_DIR:-/var/tmp/hibdisk-measure-chunks}
mkdir -p "$DIR"
if [ ! -f "$DIR/sealed.db" ]; then
	rm -rf "$DIR/root" "$DIR/fs.img" "$DIR/layer.db"
	mkdir -p "$DIR/root"
	GOROOT=$(go env GOROOT)
	cp -a "$GOROOT/src" "$GOROOT/pkg/tool" "$DIR/root/"
	/usr/sbin/mke2fs -q -t ext4 -b 4096 -d "$DIR/root" "$DIR/fs.img" 1G
	go build -o "$DIR/hibdisk" ./cmd/hibdisk
	"$DIR/hibdisk" convert "$DIR/fs.img" "$DIR/layer.db"
	sqlite3 "$DIR/layer.db" "VACUUM INTO '$DIR/sealed.db.tmp'"
	sqlite3 "$DIR/sealed.db.tmp" "PRAGMA journal_mode=DELETE; UPDATE layer SET read_only = 1" >/dev/null
	(cd "$DIR/root" && find . -type f ! -name '*"*' | sed 's|^\.||; s|.*|blocks "&"|') >"$DIR/cmds"
	/usr/sbin/debugfs -f "$DIR/cmds" "$DIR/fs.img" >"$DIR/blocks" 2>/dev/null
	mv "$DIR/sealed.db.tmp" "$DIR/sealed.db"
fi
ls -l "$DIR/fs.img" "$DIR/sealed.db"
HIBDISK_CHUNKS_LAYER="$DIR/sealed.db" HIBDISK_CHUNKS_FILES="$DIR/blocks" \
	go test ./disklayer/sqlitelayer/ -run '^$' -bench "^BenchmarkChunkSizes\$${MEASURE_BENCH:+/$MEASURE_BENCH}" -benchtime 1x
