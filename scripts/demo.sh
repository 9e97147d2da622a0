#!/usr/bin/env bash
# make demo: hibdisk's whole story, unattended, with narration, in about a
# minute under TCG. A test guest boots under QEMU from a diff layer over an
# ext4 golden base and appends to a file; hibdisk hibernates the machine
# into the layer, resumes it on a new layer, and the guest goes on where it
# stopped; then `hibdisk diff` and the sqlite3 shell show what each layer
# holds.
#
# Exit status 0 when every step did what the narration says; otherwise
# non-zero, with one "demo: FAILED: ..." line on stderr. Whatever it
# started is stopped on exit. Its files stay in HIBDISK_DEMO_DIR (default
# build/demo), which each run starts afresh. HIBDISK is the hibdisk binary
# (default bin/hibdisk, built when missing).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${HIBDISK:-$root/bin/hibdisk}
dir=${HIBDISK_DEMO_DIR:-build/demo}
started=$SECONDS

say() { printf '\n==> %s\n' "$*"; }
fail() {
  trap - ERR
  printf 'demo: FAILED: %s\n' "$*" >&2
  exit 1
}
trap 'fail "command failed (exit $?) at scripts/demo.sh:$LINENO: $BASH_COMMAND"' ERR

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# last_count FILE: the highest "hibdisk-guest: count N" in a console log.
last_count() {
  { grep -ao 'hibdisk-guest: count [0-9]*' "$1" || true; } | awk '{n=$3} END {print n+0}'
}
first_count() {
  { grep -ao 'hibdisk-guest: count [0-9]*' "$1" || true; } | awk 'NR==1 {print $3+0; exit} END {if (NR==0) print 0}'
}

# wait_count FILE N PID: wait until the console shows count >= N.
wait_count() {
  local log=$1 want=$2 pid=$3
  for _ in $(seq 900); do # 90 s
    if grep -aq 'hibdisk-guest: FAIL' "$log"; then
      fail "the guest failed: $(grep -a 'hibdisk-guest: FAIL' "$log" | head -1)"
    fi
    [ "$(last_count "$log")" -ge "$want" ] && return 0
    kill -0 "$pid" 2>/dev/null || fail "hibdisk vm exited before count $want (console in $log; $(tail -1 "${log%.log}.err" 2>/dev/null))"
    sleep 0.1
  done
  fail "no count $want on the console within 90 s (console in $log)"
}

# wait_exit PID WHAT: wait for a vm process to end; it must exit 0.
wait_exit() {
  local pid=$1 what=$2 rc=0
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && fail "$what still running 60 s after the hibernate"
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "$what exited with status $rc"
}

# wait_state LAYER: wait for LAYER.vm.json, which exists while the
# machine can be asked to hibernate.
wait_state() {
  for _ in $(seq 300); do
    [ -e "$1.vm.json" ] && return 0
    sleep 0.1
  done
  fail "no $1.vm.json: the machine cannot be asked to hibernate"
}

# shown CMD...: a command as the narration prints it (hibdisk for $bin,
# arguments with spaces quoted).
shown() {
  local out="" a
  for a in "$@"; do
    [ "$a" != "$bin" ] || a=hibdisk
    [[ $a != *[[:space:]]* ]] || a="'$a'"
    out+="${out:+ }$a"
  done
  printf '%s' "$out"
}
# show CMD...: print a command, then run it; it must succeed.
show() {
  printf '$ %s\n' "$(shown "$@")"
  local rc=0
  "$@" || rc=$?
  [ "$rc" -eq 0 ] || fail "$(shown "$@") exited with status $rc"
}
# show_tail N CMD...: the same, printing only the last N lines of its output.
show_tail() {
  local n=$1 out rc=0
  shift
  printf '$ %s | tail -n %s\n' "$(shown "$@")" "$n"
  out=$("$@") || rc=$?
  [ "$rc" -eq 0 ] || fail "$(shown "$@") exited with status $rc"
  tail -n "$n" <<<"$out"
}

say "Installing what the demo needs, if missing (scripts/deps.sh: QEMU, qemu-img, e2fsprogs, sqlite3, and what builds the guest)"
scripts/deps.sh qemu-system-x86_64 qemu-img mkfs.ext4 sqlite3 xz dpkg-deb apt-get
if [ ! -x "$bin" ]; then
  go build -o "$bin" ./cmd/hibdisk
fi
say "The test guest: Debian's cloud kernel and a Go /init, built once into build/guest (the same kit make test boots)"
kit=$(go run ./test/qemu/cmd/guestkit -root "$root") || fail "building the test guest (go run ./test/qemu/cmd/guestkit) failed: see above"
kernel=$(sed -n 1p <<<"$kit")
initrd=$(sed -n 2p <<<"$kit")
echo "kernel $kernel"
echo "initrd $initrd"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -rf "$dir/golden-src" "$dir"/*.img "$dir"/*.db "$dir"/*.db-wal "$dir"/*.db-shm "$dir"/*.vm.json "$dir"/*.log "$dir"/*.err
cd "$dir"
echo "files: $dir"

say "A golden base: mkfs.ext4 makes a 64 MiB filesystem holding /hello.txt; hibdisk convert turns it into a layer, golden.db. CI keeps one such base and never writes it."
mkdir golden-src
echo "hello from the golden base" >golden-src/hello.txt
show mkfs.ext4 -q -F -L golden -E lazy_itable_init=0,lazy_journal_init=0 -d golden-src golden.img 64M
show "$bin" convert golden.img golden.db
rm -rf golden-src golden.img
show "$bin" ls golden.db /

say "A throwaway diff layer for one job, job.db over golden.db: the guest's writes land here, reads of anything else fall through to the base."
show "$bin" create -b golden.db job.db

say "Boot: hibdisk vm run starts QEMU (-accel tcg, console on stdout, into run.log) with job.db served over NBD. The guest mounts the ext4 and appends \"tick N\" to /ticks every 200 ms, fsyncing each line before it prints \"count N\"."
append="quiet hibdisk.task=ext4 hibdisk.disk=rootfs hibdisk.append=ticks hibdisk.interval-ms=200"
printf '$ %s\n' "hibdisk vm run --accel tcg --kernel ... --initrd ... --append '$append' --mem 256M rootfs=job.db >run.log &"
"$bin" vm run --accel tcg --kernel "$kernel" --initrd "$initrd" --append "$append" --mem 256M rootfs=job.db >run.log 2>run.err &
run_pid=$!
pids+=("$run_pid")
wait_count run.log 10 "$run_pid"
grep -a 'hibdisk-guest: count' run.log | tail -n 3

say "Hibernate: hibdisk vm hibernate stops the guest mid-work and saves its RAM, device state and disk into job.db, which becomes a read-only snapshot; QEMU quits."
wait_state job.db
show "$bin" vm hibernate job.db
wait_exit "$run_pid" "hibdisk vm run"
before=$(last_count run.log)
echo "the guest had printed count $before"

say "The snapshot's filesystem, read offline by hibdisk (no QEMU, no mount; the ext4 journal is replayed in memory): the last ticks the guest fsynced."
show_tail 3 "$bin" cat job.db /ticks
snap_ticks=$("$bin" cat job.db /ticks | wc -l) || fail "hibdisk cat job.db /ticks failed"
[ "$snap_ticks" -ge "$before" ] || fail "job.db holds $snap_ticks ticks, the guest had printed $before"

say "Resume: hibdisk vm resume rebuilds RAM from job.db and starts QEMU on a new layer, r1.db over job.db. The guest does not boot again: it continues after count $before."
printf '$ %s\n' "hibdisk vm resume --top r1.db job.db >resume.log &"
"$bin" vm resume --top r1.db job.db >resume.log 2>resume.err &
resume_pid=$!
pids+=("$resume_pid")
wait_count resume.log $((before + 10)) "$resume_pid"
first=$(first_count resume.log)
grep -a 'hibdisk-guest: count' resume.log | head -n 2
echo "..."
grep -a 'hibdisk-guest: count' resume.log | tail -n 1
if [ "$first" -ne "$before" ] && [ "$first" -ne $((before + 1)) ]; then
  fail "the resumed guest counted $first first; it stopped at $before"
fi
if grep -aq 'Linux version' resume.log; then
  fail "the resumed machine booted again (resume.log has a 'Linux version' line)"
fi
echo "the guest went on from count $before to $first: same process, same open file, no reboot"

say "A second snapshot: hibernate r1.db. It stores only what changed since job.db: the RAM pages and disk sectors the guest touched."
wait_state r1.db
show "$bin" vm hibernate r1.db
wait_exit "$resume_pid" "hibdisk vm resume"
after=$(last_count resume.log)

say "hibdisk diff job.db r1.db: what changed between the two snapshots (exit status 1: they differ, as diff's does)"
rc=0
printf '$ hibdisk diff job.db r1.db\n'
"$bin" diff job.db r1.db || rc=$?
[ "$rc" -eq 1 ] || fail "hibdisk diff job.db r1.db exited $rc, want 1 (the snapshots differ)"
show_tail 2 "$bin" cat r1.db /ticks
r1_ticks=$("$bin" cat r1.db /ticks | wc -l) || fail "hibdisk cat r1.db /ticks failed"
[ "$r1_ticks" -ge "$after" ] || fail "r1.db holds $r1_ticks ticks, the guest had printed $after"

say "Every layer is a SQLite database: the sqlite3 shell reads the disk's sectors, the hibernate file's blocks and the snapshot's metadata."
for layer in golden.db job.db r1.db; do
  show sqlite3 -readonly -header -column "$layer" \
    "SELECT (SELECT count(*) FROM sectors) AS disk_sectors, (SELECT coalesce(sum(length(data)), 0) FROM sectors) AS disk_bytes, (SELECT count(*) FROM hibernate_blocks) AS ram_blocks, (SELECT coalesce(sum(length(data)), 0) FROM hibernate_blocks) AS ram_bytes"
done
show sqlite3 -readonly -header -column r1.db \
  "SELECT snapshot_id, timestamp, source, total_memory_kb FROM hibernate_snapshot"
show sqlite3 -readonly -header -column r1.db \
  "SELECT qemu_version, machine_type, ram_size, length(device_state) AS device_state_bytes, saved_at FROM vm_state"

say "Done in $((SECONDS - started)) s: the guest counted to $before, was hibernated into job.db, resumed on r1.db at $first, hibernated again at $after. Files in $dir: golden.db job.db r1.db, consoles run.log resume.log."
