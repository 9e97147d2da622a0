#!/usr/bin/env bash
# Cost that should not grow with the base (make bench-scale). For bases
# holding DATA_GIBS GiB of data (default "1 4 16"), each a raw image twice
# that size with random data in every other 1 MiB:
#   convert   hibdisk convert of the raw image, and qemu-img convert -O
#             qcow2 of the same image, like with like: unsynced
#             (hibdisk -t unsafe against qemu-img's default, which is
#             -t unsafe) and synced (hibdisk's default, writeback,
#             against qemu-img -t writeback, which flushes its output
#             before it exits); CONVERT_ROUNDS (default 3) interleaved
#             rounds, each tool rewriting its own output, medians and
#             their ratios (every run's time on stderr: q is qemu-img,
#             qw qemu-img -t writeback, u-NAME and s-NAME a binary's
#             unsynced and synced runs); and file bytes per byte of data;
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
# Last, many guests at once: CLIENTS (default 8) diff layers over one
# 1 GiB base full of data, each driven by its own fio job (4k random, QD
# 8, SECS seconds, read then write), served by one hibdisk process (one
# export each), by one hibdisk process per layer, and by one qemu-nbd per
# qcow2 overlay over the raw base: aggregate IOPS, the ratio to qemu-nbd,
# and the slowest client's IOPS and p99 latency (no client may starve).
#
#   DATA_GIBS="1 4"  BINS="main=/tmp/hibdisk-main this=bin/hibdisk"  BENCH_DIR=/var/tmp/...
#   DATA_GIBS=""  (only the clients table)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_GIBS=${DATA_GIBS-1 4 16}
CLIENTS=${CLIENTS:-8}
SECS=${SECS:-5}
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
pids=()
cleanup() {
  [ -n "$srv" ] && kill "$srv" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; return 1; }

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

# measure_chain BIN DIR: DIR/base.db under two diff layers, served by BIN:
# prints the first 4 KiB read's latency (ms, timed inside nbdsh after the
# connection), the server's anonymous and file MiB after it, the same
# after a sequential read of the whole disk (nbdcopy to null:), and that
# read's seconds.
measure_chain() {
  local bin=$1 d=$2 uri first anon file anon2 file2 seq
  "$bin" create -b "$d/base.db" "$d/mid.db" >/dev/null
  "$bin" create -b "$d/mid.db" "$d/top.db" >/dev/null
  "$bin" serve --nbd --socket "$d/s.sock" "$d/top.db" >/dev/null 2>&1 &
  srv=$!
  wait_sock "$d/s.sock"
  uri="nbd+unix:///?socket=$d/s.sock"
  first=$(nbdsh -u "$uri" -c "
import random, time
off = random.randrange(0, h.get_size() // 4096) * 4096
t = time.monotonic(); h.pread(4096, off); print(f'{(time.monotonic() - t) * 1000:.1f}')")
  read -r anon file <<<"$(mem "$srv")"
  seq=$(secs nbdcopy "$uri" null:)
  read -r anon2 file2 <<<"$(mem "$srv")"
  kill "$srv"; wait "$srv" 2>/dev/null || true; srv=
  echo "$first $anon $file $anon2 $file2 $seq"
}

CONVERT_ROUNDS=${CONVERT_ROUNDS:-3}
median() { $PY -c "import statistics,sys; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.2f}')" "$@"; }
[ -n "$DATA_GIBS" ] && printf '%-6s %-8s %9s %9s %6s %9s %9s %6s %10s %10s %11s %9s %11s %9s %10s\n' data binary unsafe "qemu" ratio synced "qemu -t wb" ratio "bytes/dat" "qcow2 b/d" "1st read" "anon MiB" "file MiB" "seq read" "commit top"
for gib in $DATA_GIBS; do
  raw="$DIR/base-$gib.raw"
  # Every other MiB holds data: 2*gib GiB of disk, gib GiB of data.
  fio --name=fill --filename="$raw" --rw=write:1M --bs=1M --size="$((2 * gib))G" \
      --refill_buffers --buffer_compress_percentage=0 --output=/dev/null
  truncate -s "$((2 * gib))G" "$raw"
  data=$((gib << 30))
  # Interleaved rounds: qemu-img, then each binary, unsynced; then the
  # same synced. Every run rewrites its tool's output, and starts with
  # nothing dirty in the page cache (an unsynced run leaves gigabytes
  # of it, and the next run would be throttled while the kernel writes
  # them back).
  declare -A conv=()
  # Keys: q and u-NAME unsynced (-t unsafe, qemu-img's default), qw and
  # s-NAME synced (-t writeback, hibdisk's default).
  for _ in $(seq "$CONVERT_ROUNDS"); do
    for m in "q u unsafe" "qw s writeback"; do
      read -r qk hk mode <<<"$m"
      rm -f "$DIR/q.qcow2"; sync
      conv[$qk]+=" $(secs qemu-img convert -t "$mode" -O qcow2 "$raw" "$DIR/q.qcow2")"
      for nb in $BINS; do
        name=${nb%%=*} bin=${nb#*=}
        rm -f "$DIR/$name.db"; sync
        conv[$hk-$name]+=" $(secs "$bin" convert -t "$mode" "$raw" "$DIR/$name.db")"
      done
    done
  done
  echo "convert runs, $gib GiB:$(for k in "${!conv[@]}"; do printf ' %s [%s ]' "$k" "${conv[$k]}"; done)" >&2
  qsecs=$(median ${conv[q]}) qsync=$(median ${conv[qw]})
  qbytes=$(size_of "$DIR/q.qcow2")
  rm -f "$DIR/q.qcow2"
  for nb in $BINS; do
    name=${nb%%=*} bin=${nb#*=} d="$DIR/$name-$gib"
    mkdir -p "$d"
    mv "$DIR/$name.db" "$d/base.db"
    usecs=$(median ${conv[u-$name]}) csecs=$(median ${conv[s-$name]})
    cbytes=$(size_of "$d/base.db" "$d/base.db-wal")
    read -r first anon file anon2 file2 seq <<<"$(measure_chain "$bin" "$d")"
    # Space after commit: 256 MiB written into a diff layer, committed.
    "$bin" create -b "$d/base.db" "$d/c.db" >/dev/null
    "$bin" serve --nbd --socket "$d/c.sock" "$d/c.db" >/dev/null 2>&1 &
    srv=$!
    for _ in $(seq 100); do [ -S "$d/c.sock" ] && break; sleep 0.05; done
    qemu-io -f raw -c 'write -P 0x5a 0 256M' -c flush "nbd+unix:///?socket=$d/c.sock" >/dev/null
    kill "$srv"; wait "$srv" 2>/dev/null || true; srv=
    "$bin" commit "$d/c.db" >/dev/null
    after=$(size_of "$d/c.db" "$d/c.db-wal")
    $PY - "$gib" "$name" "$usecs" "$qsecs" "$csecs" "$qsync" "$cbytes" "$qbytes" "$data" "$first" "$anon/$anon2" "$file/$file2" "$seq" "$after" <<'PYEOF'
import sys
gib, name, u, q, c, qs, cb, qb, data, first, anon, file, seq, after = sys.argv[1:]
u, q, c, qs, cb, qb, data = float(u), float(q), float(c), float(qs), int(cb), int(qb), int(data)
print(f"{gib + ' GiB':<6} {name:<8} {u:>8.2f}s {q:>8.2f}s {q / u:>5.2f}x {c:>8.2f}s {qs:>8.2f}s {qs / c:>5.2f}x {cb / data:>10.3f} {qb / data:>10.3f} "
      f"{first + ' ms':>11} {anon:>9} {file:>11} {seq + ' s':>9} {int(after) / 1024:>8.0f} KiB", flush=True)
PYEOF
    rm -rf "$d"
  done
  rm -f "$raw"
done
echo "convert: medians of $CONVERT_ROUNDS interleaved rounds; ratios are qemu-img's time / hibdisk's (>1: hibdisk faster), unsynced (hibdisk -t unsafe, qemu-img's default) and synced (hibdisk's default, qemu-img -t writeback); bytes/dat: layer file bytes per data byte;"
echo "anon/file MiB: after the first read / after reading the whole disk; commit top: the emptied layer after commit"

# A large sparse disk (opt in: BIG=DISK_GIB:PERCENT, e.g. BIG=100:16, a
# 100 GiB disk with 16% of it data, which needs that much data plus an
# eighth free in BENCH_DIR): the base is converted from nbdkit's
# sparse-random plugin over NBD (no raw image on disk), then served under
# two diff layers; the first read's latency and the server's memory after
# it and after reading the whole disk, as above.
if [ -n "${BIG:-}" ]; then
  gib=${BIG%%:*} pct=${BIG#*:}
  b="$DIR/big"
  mkdir -p "$b"
  nbdkit -f -U "$b/src.sock" sparse-random size="${gib}G" percent="$pct" seed=1 random-content=true & pids+=($!)
  wait_sock "$b/src.sock"
  for nb in $BINS; do
    name=${nb%%=*} bin=${nb#*=}
    csecs=$(secs "$bin" convert "nbd+unix:///?socket=$b/src.sock" "$b/base.db")
    data=$("$bin" info --json "$b/base.db" | $PY -c 'import json,sys; j=json.load(sys.stdin)[0]; print(j["data-sectors"] * j["sector-size"])')
    read -r first anon file anon2 file2 seq <<<"$(measure_chain "$bin" "$b")"
    echo "big: ${gib} GiB disk, ${pct}% data ($(( data >> 20 )) MiB), $name: convert from NBD ${csecs} s, layer $(( $(size_of "$b/base.db") >> 20 )) MiB," \
         "first read ${first} ms, anon MiB ${anon}/${anon2}, file MiB ${file}/${file2}, whole-disk read ${seq} s"
    rm -f "$b"/*.db "$b"/*.db-wal "$b"/*.db-shm
  done
fi

# Many guests at once.
[ "$CLIENTS" -gt 0 ] || exit 0
c="$DIR/clients"
mkdir -p "$c"
qemu-img create -f raw "$c/base.raw" 1G >/dev/null
fio --name=fill --filename="$c/base.raw" --rw=write --bs=1M --size=1G \
    --refill_buffers --buffer_compress_percentage=0 --output=/dev/null
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
clients_run() { # setup-name rw uri-of-client-i... -> "aggregate min-client-iops max-p99-us"
  local name=$1 rw=$2
  shift 2
  local jobs="$c/$name-$rw.fio" i=0
  printf '[global]\nioengine=nbd\nrw=%s\nbs=4k\niodepth=8\nruntime=%s\ntime_based\nsize=1G\nnorandommap\ngroup_reporting=0\n' "$rw" "$SECS" >"$jobs"
  for u in "$@"; do printf '[c%d]\nuri=%s\n' "$i" "$u" >>"$jobs"; i=$((i + 1)); done
  fio --output-format=json --output="$c/out.json" "$jobs" >/dev/null
  $PY - "$c/out.json" <<'PYEOF'
import json, sys
jobs = json.load(open(sys.argv[1]))["jobs"]
side = lambda j: j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
iops = [side(j)["iops"] for j in jobs]
p99 = [side(j)["clat_ns"]["percentile"]["99.000000"] / 1000 for j in jobs]
print(f"{sum(iops):.0f} {min(iops):.0f} {max(p99):.0f}")
PYEOF
}
printf '\n%d clients, 4k QD8 each, %s s: %-22s %10s %8s %12s %14s\n' "$CLIENTS" "$SECS" setup "IOPS" "/qemu" "slowest IOPS" "worst p99 us"
for rw in randread randwrite; do
  declare -A agg=()
  for nb in $BINS qemu-nbd=qemu-nbd; do
    name=${nb%%=*} bin=${nb#*=}
    for mode in one eight; do
      [ "$name" = qemu-nbd ] && [ "$mode" = one ] && continue
      d="$c/$name-$mode"
      rm -rf "$d" && mkdir -p "$d"
      uris=()
      if [ "$name" = qemu-nbd ]; then
        for i in $(seq 0 $((CLIENTS - 1))); do
          qemu-img create -f qcow2 -b "$c/base.raw" -F raw "$d/o$i.qcow2" >/dev/null
          qemu-nbd -f qcow2 -k "$d/s$i.sock" -t -e 0 "$d/o$i.qcow2" & pids+=($!)
          uris+=("nbd+unix:///?socket=$d/s$i.sock")
        done
      else
        [ -f "$c/base-$name.db" ] || "$bin" convert "$c/base.raw" "$c/base-$name.db" >/dev/null
        exports=()
        for i in $(seq 0 $((CLIENTS - 1))); do
          "$bin" create -b "$c/base-$name.db" "$d/j$i.db" >/dev/null
          if [ "$mode" = one ]; then
            exports+=(--export "c$i=$d/j$i.db")
            uris+=("nbd+unix:///c$i?socket=$d/s.sock")
          else
            "$bin" serve --nbd --socket "$d/s$i.sock" "$d/j$i.db" >/dev/null 2>&1 & pids+=($!)
            uris+=("nbd+unix:///?socket=$d/s$i.sock")
          fi
        done
        if [ "$mode" = one ]; then
          "$bin" serve --nbd --socket "$d/s.sock" "${exports[@]}" >/dev/null 2>&1 & pids+=($!)
        fi
      fi
      for u in "${uris[@]}"; do wait_sock "${u##*socket=}"; done
      read -r total slowest p99 <<<"$(clients_run "$name-$mode" "$rw" "${uris[@]}")"
      stop_all
      agg["$name-$mode"]="$total $slowest $p99"
    done
  done
  q=${agg[qemu-nbd-eight]%% *}
  for k in "${!agg[@]}"; do
    read -r total slowest p99 <<<"${agg[$k]}"
    printf '%-9s %-30s %10s %7.2fx %12s %14s\n' "$rw" "$k" "$total" "$($PY -c "print($total / $q)")" "$slowest" "$p99"
  done | sort
  unset agg
done
