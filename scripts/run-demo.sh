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
# The test guest's kernel and initramfs, if `make test` has built them.
kit=$(ls -td build/guest/kit-*/ 2>/dev/null | head -1 || true)
if [ -n "$kit" ] && [ -f "${kit}vmlinuz" ]; then
  cat <<MSG
Boot QEMU from it (in another terminal). The guest is make test's: it counts
on the console and writes each count to the disk (serial "data"); Ctrl-A X quits.
  qemu-system-x86_64 -accel tcg -m 256 -nographic -no-reboot \\
    -kernel $PWD/${kit}vmlinuz -initrd $PWD/${kit}initramfs.cpio \\
    -append 'console=ttyS0 quiet hibdisk.task=counter hibdisk.disk=data hibdisk.interval-ms=500 hibdisk.mem=8388608' \\
    -blockdev driver=nbd,node-name=hd0,server.type=unix,server.path=$sock \\
    -device virtio-blk-pci,drive=hd0,serial=data
MSG
else
  cat <<MSG
Boot QEMU from it (in another terminal) with your kernel and initramfs
(make test builds a test guest under build/guest; run make run again after it):
  qemu-system-x86_64 -accel tcg -m 512 -nographic \\
    -blockdev driver=nbd,node-name=hd0,server.type=unix,server.path=$sock \\
    -device virtio-blk-pci,drive=hd0 \\
    -kernel vmlinuz -initrd initrd.img -append 'console=ttyS0 root=/dev/vda'
MSG
fi
cat <<MSG
Inspect it meanwhile: nbdinfo --map 'nbd+unix:///?socket=$sock'
                      qemu-img info 'nbd+unix:///?socket=$sock'

MSG
exec "$bin" serve --nbd --socket "$sock" demo.db
