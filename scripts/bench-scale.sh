#!/usr/bin/env bash
# Cost that should not grow with the base (make bench-scale). For bases
# holding DATA_GIBS GiB of data (default "1 4 16"), each a raw image twice
# that size with random data in every other 1 MiB:
#   convert   hibdisk convert of the raw image, and qemu-img convert -O
#             qcow2 of the same image, interleaved: time, ratio, and file
#             bytes per byte of data;
#   first     a 3-deep chain (base <- mid <- top, mid holding a few
#             writes) served by hibdisk serve: the latency of the first
#             4 KiB read at a random offset (timed inside nbdsh, after
#             the connection), then the server's memory (RssAnon,
#             RssFile + RssShmem) after it and after a sequential read
#             of the whole disk (nbdcopy to null:), with that read's time;
#   commit    a 256 MiB diff layer over the base, written and committed:
#             the emptied layer's file size.
# Then the binaries in BINS side by side for every cell (BINS="name=path
# ..."; default: this tree's build).
#
#   DATA_GIBS="1 4"  BINS="main=/tmp/hibdisk-main this=bin/hibdisk"  DIR=/var/tmp/...
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_GIBS=${DATA_GIBS:-1 4 16}
DIR=${BENCH_DIR:-/var/tmp/hibdisk-bench-scale}
PY=/usr/bin/python3
export PATH=/usr/bin:$PATH # nbdsh needs the system Python

scripts/deps.sh >/dev/null
if [ -z "${BINS:-}" ]; then
  go build -o bin/hibdisk ./cmd/hibdisk
  BINS="this=$PWD/bin/hibdisk"
fi
rm -rf "$DIR" && mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

secs() { # command...: prints its wall time in seconds
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null
  e=$(date +%s.%N)
  $PY -c "print(f'{$e - $s:.2f}')"
}
size_of() { $PY -c "import os,sys; print(sum(os.path.getsize(p) for p in sys.argv[1:] if os.path.exists(p)))" "$@"; }
mem() { # pid: "anon-MiB file-MiB"
  awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} /^RssShmem/ {s=$2} END {printf "%.0f %.0f", a/1024, (f+s)/1024}' "/proc/$1/status"
}

printf '%-6s %-8s %9s %9s %6s %10s %10s %11s %9s %11s %9s %10s\n' data binary convert qemu-img ratio "bytes/dat" "qcow2 b/d" "1st read" "anon MiB" "file MiB" "seq read" "commit top"
for gib in $DATA_GIBS; do
  raw="$DIR/base-$gib.raw"
  # Every other MiB holds data: 2*gib GiB of disk, gib GiB of data.
  fio --name=fill --filename="$raw" --rw=write:1M --bs=1M --size="$((2 * gib))G" \
      --refill_buffers --buffer_compress_percentage=0 --output=/dev/null
  truncate -s "$((2 * gib))G" "$raw"
  data=$((gib << 30))
  qsecs=$(secs qemu-img convert -O qcow2 "$raw" "$DIR/q.qcow2")
  qbytes=$(size_of "$DIR/q.qcow2")
  rm -f "$DIR/q.qcow2"
  for nb in $BINS; do
    name=${nb%%=*} bin=${nb#*=} d="$DIR/$name-$gib"
    mkdir -p "$d"
    csecs=$(secs "$bin" convert "$raw" "$d/base.db")
    cbytes=$(size_of "$d/base.db" "$d/base.db-wal")
    "$bin" create -b "$d/base.db" "$d/mid.db" >/dev/null
    "$bin" create -b "$d/mid.db" "$d/top.db" >/dev/null
    "$bin" serve --nbd --socket "$d/s.sock" "$d/top.db" >/dev/null 2>&1 &
    srv=$!
    for _ in $(seq 100); do [ -S "$d/s.sock" ] && break; sleep 0.05; done
    uri="nbd+unix:///?socket=$d/s.sock"
    first=$(nbdsh -u "$uri" -c "
import random, time
off = random.randrange(0, h.get_size() // 4096) * 4096
t = time.monotonic(); h.pread(4096, off); print(f'{(time.monotonic() - t) * 1000:.1f}')")
    read -r anon file <<<"$(mem "$srv")"
    seq=$(secs nbdcopy "$uri" null:)
    read -r anon2 file2 <<<"$(mem "$srv")"
    kill "$srv"; wait "$srv" 2>/dev/null || true; srv=
    # Space after commit: 256 MiB written into a diff layer, committed.
    "$bin" create -b "$d/base.db" "$d/c.db" >/dev/null
    "$bin" serve --nbd --socket "$d/c.sock" "$d/c.db" >/dev/null 2>&1 &
    srv=$!
    for _ in $(seq 100); do [ -S "$d/c.sock" ] && break; sleep 0.05; done
    qemu-io -f raw -c 'write -P 0x5a 0 256M' -c flush "nbd+unix:///?socket=$d/c.sock" >/dev/null
    kill "$srv"; wait "$srv" 2>/dev/null || true; srv=
    "$bin" commit "$d/c.db" >/dev/null
    after=$(size_of "$d/c.db" "$d/c.db-wal")
    $PY - "$gib" "$name" "$csecs" "$qsecs" "$cbytes" "$qbytes" "$data" "$first" "$anon/$anon2" "$file/$file2" "$seq" "$after" <<'PYEOF'
import sys
gib, name, c, q, cb, qb, data, first, anon, file, seq, after = sys.argv[1:]
c, q, cb, qb, data = float(c), float(q), int(cb), int(qb), int(data)
print(f"{gib + ' GiB':<6} {name:<8} {c:>8.1f}s {q:>8.1f}s {q / c:>5.2f}x {cb / data:>10.3f} {qb / data:>10.3f} "
      f"{first + ' ms':>11} {anon:>9} {file:>11} {seq + ' s':>9} {int(after) / 1024:>8.0f} KiB", flush=True)
PYEOF
    rm -rf "$d"
  done
  rm -f "$raw"
done
echo "convert ratio: qemu-img time / hibdisk time (>1: hibdisk faster); bytes/dat: layer file bytes per data byte;"
echo "anon/file MiB: after the first read / after reading the whole disk; commit top: the emptied layer after commit"
