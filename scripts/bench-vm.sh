#!/usr/bin/env bash
# Machine hibernate/resume benchmark (make bench-vm). For every guest RAM
# size in MEMS and every hibdisk binary in BINS, RUNS times, interleaved
# (run 1 of every binary and size, then run 2, ...) so that the load of a
# shared machine falls on all of them alike:
#   boot the u-root test guest (counter task: 32 MiB of live data, a count
#   every 50 ms written to its disk) on a fresh layer, wait for it to count,
#   vm hibernate --continue   first hibernate of the booted machine, and
#                             resume from it in the same process
#   vm hibernate --continue   a stacked hibernate 2 s later (the guest only
#                             counted in between), and resume from the
#                             stacked chain
#   then check that the guest counts on, and stop it.
# After the u-root runs of each round, the same sequence with the real
# Debian 12 guest of test/qemu (row "deb1G": 1 GiB RAM, booted with
# systemd.unit=hibdisk-ticker.target from a diff layer over a golden
# layer made once per binary with hibdisk convert, outside the timed
# runs): wait for its 5th tick (a line a second, each fsynced to its
# disk), hibernate --continue, wait 2 more ticks, stacked hibernate
# --continue, wait for 1 more tick, stop. Its image is the newest cached
# build/debian/img-*/; without one, go test -run '^TestDebian$'
# ./test/qemu builds it (as root: mmdebstrap, a Debian mirror, minutes).
# DEBIAN=0 leaves the Debian guest out.
# Prints the median of each cell over the runs: hibernate time from QMP
# stop to the snapshot committed (stop + save; QEMU's quit comes after),
# RAM stored, resume time to a running guest (cont answered), the RAM
# rebuild time and its rate (non-zero RAM written / rebuild time), and the
# load average seen during the runs.
#
#   BINS="main=/tmp/hibdisk-main this=bin/hibdisk"  side by side
#   MEMS="512M 1G"  RUNS=5  KIT=build/guest/kit-...  BENCH_DIR=/dev/shm/...
#   DEBIAN=0  DEBIAN_IMG=build/debian/img-...
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
MEMS=${MEMS:-512M 1G}
DIR=${BENCH_DIR:-/tmp/hibdisk-bench-vm}
PY=/usr/bin/python3

if [ -z "${BINS:-}" ]; then
  go build -o bin/hibdisk ./cmd/hibdisk
  BINS="this=$PWD/bin/hibdisk"
fi
if [ -z "${KIT:-}" ]; then
  KIT=$(ls -dt build/guest/kit-*/ 2>/dev/null | head -1 || true)
  if [ -z "$KIT" ]; then
    echo "building the guest kit (go test ./test/qemu -run TestBoot) ..." >&2
    go test -count=1 -run '^TestBoot' ./test/qemu >/dev/null
    KIT=$(ls -dt build/guest/kit-*/ | head -1)
  fi
fi
KIT=$(cd "$KIT" && pwd)
DEB=
if [ "${DEBIAN:-1}" != 0 ]; then
  DEB=${DEBIAN_IMG:-$(ls -dt build/debian/img-*/ 2>/dev/null | head -1 || true)}
  if [ -z "$DEB" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "no Debian guest image under build/debian, and building one needs root (mmdebstrap): run as root once, or DEBIAN=0 to leave the Debian guest out" >&2
      exit 1
    fi
    echo "building the Debian guest image (go test ./test/qemu -run TestDebian; minutes) ..." >&2
    log=$(mktemp)
    # The image is what is needed here: a failure of the test's own checks
    # after the build is reported but does not stop the benchmark.
    go test -count=1 -timeout 30m -run '^TestDebian$' ./test/qemu >"$log" 2>&1 ||
      { echo "go test -run TestDebian failed:" >&2; tail -30 "$log" >&2; }
    rm -f "$log"
    DEB=$(ls -dt build/debian/img-*/ 2>/dev/null | head -1 || true)
    [ -n "$DEB" ] || { echo "no Debian guest image under build/debian after go test -run TestDebian" >&2; exit 1; }
  fi
  DEB=$(cd "$DEB" && pwd)
fi

rm -rf "$DIR" && mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd) # the golden layer's path is kept in each diff layer
vmpid=
cleanup() { [ -n "$vmpid" ] && kill "$vmpid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
results="$DIR/results.jsonl"
: >"$results"

wait_count() { # console-file minimum-lines: wait for that many count lines
  for _ in $(seq 1200); do
    [ "$(grep -c 'hibdisk-guest: count ' "$1" 2>/dev/null || true)" -ge "$2" ] && return 0
    grep -q 'hibdisk-guest: FAIL' "$1" && { echo "guest failed: $(grep FAIL "$1")" >&2; return 1; }
    sleep 0.1
  done
  echo "no count lines in $1 after 120 s" >&2; return 1
}

one() { # name bin mem run
  local name=$1 bin=$2 mem=$3 run=$4 d="$DIR/$1-$3-$4"
  mkdir -p "$d"
  "$bin" create -s 32M "$d/job.db" >/dev/null
  (cd "$d" && exec "$bin" vm run --kernel "$KIT/vmlinuz" --initrd "$KIT/initramfs.cpio" \
    --append "hibdisk.task=counter hibdisk.disk=data hibdisk.seed=hib hibdisk.mem=33554432 hibdisk.interval-ms=50" \
    --mem "$mem" data=job.db >console.txt 2>stderr.txt) &
  vmpid=$!
  wait_count "$d/console.txt" 20
  local load0; load0=$(cut -d' ' -f1 /proc/loadavg)
  "$bin" vm hibernate --json --continue --top r1.db "$d/job.db" >"$d/h1.json"
  local n; n=$(grep -c 'hibdisk-guest: count ' "$d/console.txt")
  wait_count "$d/console.txt" $((n + 20)) # counts on after the resume
  "$bin" vm hibernate --json --continue --top r2.db "$d/r1.db" >"$d/h2.json"
  n=$(grep -c 'hibdisk-guest: count ' "$d/console.txt")
  wait_count "$d/console.txt" $((n + 5))
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  kill "$vmpid"; wait "$vmpid" 2>/dev/null || true; vmpid=
  record "$d" "$name" "$mem" "$load0" "$load1"
  rm -rf "$d"
}

record() { # dir name mem load0 load1: h1.json and h2.json of dir as a results line
  $PY - "$@" >>"$results" <<'PYEOF'
import json, sys
d, name, mem, l0, l1 = sys.argv[1:]
h1, h2 = (json.load(open(f"{d}/{f}")) for f in ("h1.json", "h2.json"))
for h in (h1, h2):
    if h.get("error"):
        sys.exit(f"{d}: {h['error']}")
def hib(h):
    h = h["hibernate"]
    return h["stop_seconds"] + h["save_seconds"], h["ram_bytes_stored"] / 2**20
def res(h):
    r = h["resume"]
    return r["total_seconds"], r["rebuild_seconds"], r["ram_bytes_written"] / 2**20
first, first_mib = hib(h1)
stacked, stacked_mib = hib(h2)
r1, rb1, w1 = res(h1)
r2, rb2, w2 = res(h2)
phase = lambda h, k: h["hibernate"].get(k + "_seconds", float("nan"))
print(json.dumps(dict(name=name, mem=mem, first=first, first_mib=first_mib,
    stacked=stacked, stacked_mib=stacked_mib, resume=r1, rebuild=rb1, rebuilt_mib=w1,
    resume2=r2, rebuild2=rb2, load=(float(l0) + float(l1)) / 2,
    stop=phase(h1, "stop"), write=phase(h1, "write"), digest=phase(h1, "digest"), commit=phase(h1, "commit"),
    swrite=phase(h2, "write"), scommit=phase(h2, "commit"),
    qstart=h1["resume"].get("start_seconds", float("nan")), qmigrate=h1["resume"].get("migrate_seconds", float("nan")))))
PYEOF
}

vm_alive() { # the vm process has not exited (a zombie has)
  local state
  state=$(cut -d' ' -f3 "/proc/$vmpid/stat" 2>/dev/null) && [ "$state" != Z ]
}

last_tick() { # console-file: the Debian ticker's last counter, 0 before the first
  local n
  n=$(grep -aoE 'HIBDISK-TICK [0-9]+' "$1" 2>/dev/null | tail -1 | cut -d' ' -f2) || true
  echo "${n:-0}"
}

wait_tick() { # run-dir minimum-counter timeout-seconds
  for _ in $(seq $(($3 * 10))); do
    [ "$(last_tick "$1/console.txt")" -ge "$2" ] && return 0
    vm_alive || { echo "hibdisk vm ended before tick $2: $(tail -5 "$1/stderr.txt")" >&2; return 1; }
    sleep 0.1
  done
  echo "no tick $2 in $1/console.txt after $3 s; its tail:" >&2
  tail -20 "$1/console.txt" >&2
  return 1
}

one_debian() { # name bin run: the Debian guest, 1 GiB, the ticker target
  local name=$1 bin=$2 run=$3 d="$DIR/$1-deb1G-$3"
  mkdir -p "$d"
  "$bin" create -b "$DIR/golden-$name.db" "$d/job.db" >/dev/null
  (cd "$d" && exec "$bin" vm run --kernel "$DEB/vmlinuz" --initrd "$DEB/initrd.img" \
    --append "root=/dev/vda rw systemd.unit=hibdisk-ticker.target" \
    --mem 1G job.db >console.txt 2>stderr.txt) &
  vmpid=$!
  wait_tick "$d" 5 300 # the boot takes about 45 s under TCG
  local load0; load0=$(cut -d' ' -f1 /proc/loadavg)
  "$bin" vm hibernate --json --continue --top r1.db "$d/job.db" >"$d/h1.json"
  local n; n=$(last_tick "$d/console.txt")
  wait_tick "$d" $((n + 2)) 60 # ticks on after the resume
  "$bin" vm hibernate --json --continue --top r2.db "$d/r1.db" >"$d/h2.json"
  n=$(last_tick "$d/console.txt")
  wait_tick "$d" $((n + 1)) 60
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  kill "$vmpid"; wait "$vmpid" 2>/dev/null || true; vmpid=
  local boots; boots=$(grep -ac 'Linux version' "$d/console.txt" || true)
  [ "$boots" = 1 ] || { echo "$d: the console shows $boots kernel boots, want 1 (a resume rebooted?)" >&2; return 1; }
  record "$d" "$name" deb1G "$load0" "$load1"
  rm -rf "$d"
}

if [ -n "$DEB" ]; then
  echo "Debian guest: $DEB" >&2
  for nb in $BINS; do # the golden layer, in each binary's own layer format
    TIMEFORMAT="golden layer for ${nb%%=*}: hibdisk convert in %1R s"
    time "${nb#*=}" convert "$DEB/rootfs.img" "$DIR/golden-${nb%%=*}.db"
  done
fi

for run in $(seq "$RUNS"); do
  for mem in $MEMS; do
    for nb in $BINS; do
      echo "run $run/$RUNS: ${nb%%=*} --mem $mem" >&2
      one "${nb%%=*}" "${nb#*=}" "$mem" "$run"
    done
  done
  if [ -n "$DEB" ]; then
    for nb in $BINS; do
      echo "run $run/$RUNS: ${nb%%=*} Debian guest, --mem 1G" >&2
      one_debian "${nb%%=*}" "${nb#*=}" "$run"
    done
  fi
done

$PY - "$results" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["mem"], r["name"]), []).append(r)
med = lambda g, k: statistics.median(r[k] for r in g)
print(f"median of {max(len(g) for g in groups.values())} runs each (times in s, from QMP stop to commit / to the guest running)")
if any(mem == "deb1G" for mem, _ in groups):
    print("deb1G: the Debian 12 guest of test/qemu, 1 GiB RAM, systemd target hibdisk-ticker")
hdr = ("guest", "binary", "1st hib", "MiB", "MiB/s", "stacked", "MiB", "resume", "rebuild", "MiB", "MiB/s", "resume2", "load")
print("%-6s %-8s %8s %7s %7s %8s %6s %7s %8s %6s %7s %8s %5s" % hdr)
for (mem, name), g in groups.items():
    first, fm, rb, wm = med(g, "first"), med(g, "first_mib"), med(g, "rebuild"), med(g, "rebuilt_mib")
    print("%-6s %-8s %8.3f %7.1f %7.0f %8.3f %6.1f %7.3f %8.3f %6.1f %7.0f %8.3f %5.1f" % (
        mem, name, first, fm, fm / first, med(g, "stacked"), med(g, "stacked_mib"),
        med(g, "resume"), rb, wm, wm / rb, med(g, "resume2"), med(g, "load")))
print()
print("phases (medians, s): first hibernate stop / write / digest wait / commit; stacked write / commit; resume QEMU start / migrate")
for (mem, name), g in groups.items():
    print("%-6s %-8s  %6.3f %6.3f %6.3f %6.3f   %6.3f %6.3f   %6.3f %6.3f" % (mem, name, *(med(g, k) for k in
        ("stop", "write", "digest", "commit", "swrite", "scommit", "qstart", "qmigrate"))))
PYEOF
