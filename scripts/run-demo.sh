#!/usr/bin/env bash
# make run: on a fresh Debian machine with Go, everything needed to boot a
# VM from a hibdisk layer by hand:
#   1. the Debian packages it needs (scripts/deps.sh, only these commands);
#   2. the test guest's kernel and initramfs (test/qemu/cmd/guestkit: the
#      same code and cache, build/guest, as make test's QEMU tests);
#   3. a golden base, golden.db: a 64 MiB ext4 made by mkfs.ext4 and
#      converted into a layer (kept between runs);
#   4. a fresh diff layer over it, job.db (remade on every run: the
#      guest's writes land there, golden.db is never written);
# then it serves job.db over NBD on a unix socket and prints the QEMU
# command to paste into another terminal.
#
# Environment: HIBDISK_RUN_DIR (default build/run) holds the layers and
# the socket; HIBDISK is the hibdisk binary (default bin/hibdisk, built
# when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${HIBDISK:-$root/bin/hibdisk}
dir=${HIBDISK_RUN_DIR:-build/run}

step() { printf 'run: %s\n' "$*" >&2; }

scripts/deps.sh qemu-system-x86_64 qemu-img mkfs.ext4 sqlite3 nbdinfo xz dpkg-deb apt-get
if [ ! -x "$bin" ]; then
  step "building $bin"
  go build -o "$bin" ./cmd/hibdisk
fi
step "the test guest's kernel and initramfs (built once into build/guest; a first build downloads Debian's cloud kernel)"
kit=$(go run ./test/qemu/cmd/guestkit -root "$root")
kernel=$(sed -n 1p <<<"$kit")
initrd=$(sed -n 2p <<<"$kit")

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -e "$dir/golden.db" ]; then
  step "golden base: mkfs.ext4 of 64 MiB with /hello.txt, converted into $dir/golden.db"
  rm -rf "$dir/golden-src" "$dir/golden.img"
  mkdir "$dir/golden-src"
  echo "hello from the golden base (made by mkfs.ext4 -d, converted with hibdisk convert)" >"$dir/golden-src/hello.txt"
  mkfs.ext4 -q -F -L golden -E lazy_itable_init=0,lazy_journal_init=0 -d "$dir/golden-src" "$dir/golden.img" 64M >/dev/null
  if ! "$bin" convert "$dir/golden.img" "$dir/golden.db"; then
    rm -f "$dir/golden.db" "$dir/golden.db-wal" "$dir/golden.db-shm"
    exit 1
  fi
  rm -rf "$dir/golden-src" "$dir/golden.img"
fi
sock="$dir/nbd.sock"
if [ -S "$sock" ] && nbdinfo --size "nbd+unix:///?socket=$sock" >/dev/null 2>&1; then
  echo "run: $sock is being served already (another make run?): stop that one first" >&2
  exit 1
fi
rm -f "$dir/job.db" "$dir/job.db-wal" "$dir/job.db-shm" "$sock"
step "a fresh diff layer over it: $dir/job.db"
"$bin" create -b "$dir/golden.db" --label make-run "$dir/job.db" >/dev/null
echo

append="console=ttyS0 panic=-1 quiet hibdisk.task=ext4 hibdisk.disk=rootfs hibdisk.append=ticks hibdisk.interval-ms=1000"
cat <<MSG
The guest (make test's test guest: Debian's cloud kernel, a Go /init) mounts
the disk's ext4 and appends "tick N" to /ticks once a second, fsyncing each
line before it prints "hibdisk-guest: count N". Its writes go to job.db;
golden.db stays as it was. Boot it from another terminal (TCG, ~5 s to the
first count); quit QEMU with Ctrl-A X:

  qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot \\
    -kernel $kernel \\
    -initrd $initrd \\
    -append '$append' \\
    -blockdev driver=nbd,node-name=hd0,server.type=unix,server.path=$sock \\
    -device virtio-blk-pci,drive=hd0,serial=rootfs

Meanwhile or afterwards (read-only commands work on a layer being served):
  $bin cat $dir/job.db /ticks
  $bin diff $dir/golden.db $dir/job.db
  sqlite3 -readonly $dir/job.db 'SELECT count(*), sum(length(data)) FROM sectors'
  nbdinfo --map 'nbd+unix:///?socket=$sock'

Stop the server with Ctrl-C (it flushes job.db). The next make run keeps
golden.db and starts over with a new job.db.

MSG
exec "$bin" serve --nbd --socket "$sock" "$dir/job.db"
