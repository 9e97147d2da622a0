#!/usr/bin/env bash
# make run: serve a demo disk over NBD and print how to boot QEMU from it.
# demo.db (1 GiB, sparse) is created on first use and kept between runs;
# `make clean` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/hibdisk
[ -x "$bin" ] || go build -o "$bin" ./cmd/hibdisk

if [ ! -e demo.db ]; then
  "$bin" create -s 1G --label demo demo.db
fi
"$bin" info demo.db
echo
sock="$PWD/demo.sock"
cat <<MSG
Boot QEMU from it (in another terminal), for example with your kernel:
  qemu-system-x86_64 -accel tcg -m 512 -nographic \\
    -blockdev driver=nbd,node-name=hd0,server.type=unix,server.path=$sock \\
    -device virtio-blk-pci,drive=hd0 \\
    -kernel vmlinuz -initrd initrd.img -append 'console=ttyS0 root=/dev/vda'
Or inspect it: nbdinfo 'nbd+unix:///?socket=$sock'; qemu-img info 'nbd+unix:///?socket=$sock'

MSG
exec "$bin" serve --nbd --socket "$sock" demo.db
