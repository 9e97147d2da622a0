#!/usr/bin/env bash
# Side-by-side NBD benchmark (make bench-nbd). In one run, on one
# filesystem, with the same data and the same client (fio's nbd engine):
#   hibdisk   hibdisk serving a diff layer over a raw base
#   qemu-nbd  qemu-nbd serving a qcow2 overlay over the same raw base
#   nbdkit    nbdkit memory (the transport's ceiling)
# Cells: 4k randread and randwrite at QD1 and QD32, 1M sequential read and
# write at QD8; each the median of RUNS runs of SECS seconds.
# Then qemu-img bench sequential, 64 KiB requests at depth 16 over the
# whole disk: reads, and writes with a flush every 64 MiB (so the time
# includes making the data durable). qemu-img bench writes zeros unless
# given --pattern, which hibdisk stores as tombstones and qcow2 as data;
# the fio cells write real data. The three servers take turns within each
# round of runs. Prints IOPS (4k) or MiB/s and the ratios hibdisk/qemu-nbd
# and hibdisk/nbdkit, and every run on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-1G}
SECS=${SECS:-4}
RUNS=${RUNS:-3}
CELLS=${CELLS:-.} # a regular expression: only the cells whose names match
DIR=${BENCH_DIR:-/dev/shm/hibdisk-bench}
PY=/usr/bin/python3

scripts/deps.sh
go build -o bin/hibdisk ./cmd/hibdisk
rm -rf "$DIR" && mkdir -p "$DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT

echo "preparing a $SIZE raw base with data in $DIR ..." >&2
qemu-img create -f raw "$DIR/base.raw" "$SIZE" >/dev/null
# Fill it with non-zero data so reads are real reads everywhere.
fio --name=fill --filename="$DIR/base.raw" --rw=write --bs=1M --size="$SIZE" \
    --refill_buffers --buffer_compress_percentage=0 --output=/dev/null
bin/hibdisk create -b "$DIR/base.raw" -F raw "$DIR/job.db" >/dev/null
qemu-img create -f qcow2 -b "$DIR/base.raw" -F raw "$DIR/over.qcow2" >/dev/null

bin/hibdisk serve --nbd --socket "$DIR/h.sock" "$DIR/job.db" >/dev/null & pids+=($!)
qemu-nbd -f qcow2 -k "$DIR/q.sock" -t -e 0 --discard=unmap "$DIR/over.qcow2" & pids+=($!)
nbdkit -f -U "$DIR/m.sock" memory "$SIZE" & pids+=($!)
for s in h q m; do
  for _ in $(seq 100); do [ -S "$DIR/$s.sock" ] && break; sleep 0.1; done
done
# nbdkit memory starts empty: give it the same data.
nbdcopy "$DIR/base.raw" "nbd+unix:///?socket=$DIR/m.sock"

fio_run() { # server-socket rw bs qd -> IOPS (4k) or MiB/s of one run
  local sock=$1 rw=$2 bs=$3 qd=$4
  fio --name=t --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$rw" --bs="$bs" \
      --iodepth="$qd" --runtime="$SECS" --time_based --size="$SIZE" --norandommap \
      --output-format=json --output="$DIR/f.json" >/dev/null
  $PY - "$DIR/f.json" "$bs" <<'PYEOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
print(side["iops"] if sys.argv[2] == "4k" else side["bw_bytes"] / 2**20)
PYEOF
}

qemu_bench_run() { # server-socket [-w ...] -> MiB/s of one pass over the whole disk
  local sock=$1
  shift
  local count=$(( $(qemu-img info --output=json "nbd+unix:///?socket=$sock" | $PY -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') / 65536 ))
  local secs
  secs=$(qemu-img bench -f raw -c "$count" -d 16 -s 64k "$@" "nbd+unix:///?socket=$sock" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
  $PY -c "print($count * 65536 / 2**20 / $secs)"
}

rotate() { # N A B C...: the list rotated left N times
  local n=$(( $1 % ($# - 1) ))
  shift
  local a=("$@")
  echo "${a[@]:n}" "${a[@]:0:n}"
}

median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }

# measure NAME UNIT COMMAND ARGS...: runs COMMAND SOCKET ARGS... RUNS times
# for each server, the servers taking turns within each round so that
# drift in the machine's speed (large on shared 2-core machines) falls on
# all three alike, and prints the medians and ratios. The order rotates
# from round to round (h q m, q m h, m h q, ...): which server runs
# first in a round decided the write cells by up to 1.5x (the one after
# another's writes found the page cache and the host busier or freer),
# so with RUNS a multiple of 3 each server runs in each place equally.
measure() {
  local name=$1 unit=$2 cmd=$3 h=() q=() m=() round=0 s
  shift 3
  [[ $name =~ $CELLS ]] || return 0
  for _ in $(seq "$RUNS"); do
    for s in $(rotate $round h q m); do
      case $s in
        h) h+=("$("$cmd" "$DIR/h.sock" "$@")") ;;
        q) q+=("$("$cmd" "$DIR/q.sock" "$@")") ;;
        m) m+=("$("$cmd" "$DIR/m.sock" "$@")") ;;
      esac
    done
    round=$((round + 1))
  done
  echo "$name runs: hibdisk ${h[*]}; qemu-nbd ${q[*]}; nbdkit ${m[*]}" >&2
  $PY - "$name" "$unit" "$(median "${h[@]}")" "$(median "${q[@]}")" "$(median "${m[@]}")" <<'PYEOF'
import sys
name, unit, h, q, m = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
print(f"{name:<20} {h:>9.0f} {unit:<5} {q:>9.0f}    {m:>9.0f}    {h/q:>9.2f}x {h/m:>9.2f}x", flush=True)
PYEOF
}

printf '%-20s %9s       %9s    %9s    %10s %10s\n' cell hibdisk qemu-nbd nbdkit "h/qemu" "h/nbdkit"
for c in "randread 4k 1" "randread 4k 32" "randwrite 4k 1" "randwrite 4k 32" "read 1M 8" "write 1M 8"; do
  read -r rw bs qd <<<"$c"
  unit=IOPS; [ "$bs" = 1M ] && unit=MiB/s
  measure "$rw $bs QD$qd" "$unit" fio_run "$rw" "$bs" "$qd"
done
measure "qemu-img bench read" MiB/s qemu_bench_run
measure "qemu-img bench write" MiB/s qemu_bench_run -w --flush-interval=1024
