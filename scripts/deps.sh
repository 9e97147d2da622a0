#!/usr/bin/env bash
# Installs the Debian packages hibdisk's tests and benchmarks run against
# (the real peers: QEMU, libnbd, nbdkit, fio; filesystem tools for the
# inspection tests; xz for the guest kernel's modules; gcc for the
# capture tests' helper process; the sqlite3 shell, which the README's
# SQL examples and the changed-base tests use; mmdebstrap, which builds
# the Debian test guest; headless Chromium, which loads `hibdisk report`'s
# page in its test; zsh, groff and mandoc, which run the completion
# scripts and render the man page in theirs) when any is missing.
# Idempotent and quiet when everything is already there.
#
#   scripts/deps.sh            everything make test needs
#   scripts/deps.sh CMD...     only the packages of these commands (make run
#                              and make demo need far fewer than the tests)
set -euo pipefail

# command -> Debian package
declare -A need=(
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-nbd]=qemu-utils
  [qemu-system-x86_64]=qemu-system-x86
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdsh]=libnbd-bin
  [nbdkit]=nbdkit
  [fio]=fio
  [mkfs.ext4]=e2fsprogs
  [debugfs]=e2fsprogs
  [e2fsck]=e2fsprogs
  [dumpe2fs]=e2fsprogs
  [mkfs.vfat]=dosfstools
  [mcopy]=mtools
  [xorriso]=xorriso
  [mksquashfs]=squashfs-tools
  [sfdisk]=fdisk
  [sgdisk]=gdisk
  [xz]=xz-utils
  [dpkg-deb]=dpkg
  [apt-get]=apt
  [gcc]=gcc
  [sqlite3]=sqlite3
  [mmdebstrap]=mmdebstrap
  [chromium]=chromium
  [zsh]=zsh
  [groff]=groff-base
  [mandoc]=mandoc
)
cmds=("$@")
all=false
if [ ${#cmds[@]} -eq 0 ]; then
  cmds=("${!need[@]}")
  all=true
fi
missing=()
for cmd in "${cmds[@]}"; do
  if [ -z "${need[$cmd]:-}" ]; then
    echo "deps: $cmd is not in scripts/deps.sh's table: add it with its Debian package" >&2
    exit 2
  fi
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# nbdsh is a Python program: it needs the libnbd binding for the system Python.
extra=()
if $all; then
  extra=(python3-libnbd)
  if command -v /usr/bin/python3 >/dev/null 2>&1 && ! /usr/bin/python3 -c 'import nbd' 2>/dev/null; then
    missing+=(python3-libnbd)
  fi
fi
# The QEMU tests download Debian's cloud kernel with apt-get: they need
# package lists that know it.
lists_ok=true
apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || lists_ok=false
if [ ${#missing[@]} -eq 0 ] && $lists_ok; then
  exit 0
fi
if [ ${#missing[@]} -eq 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: apt does not know linux-image-cloud-amd64 (run as root: apt-get update)" >&2
    exit 1
  fi
  echo "deps: updating the package lists (for the guest kernel)" >&2
  apt-get update -qq
  exit 0
fi

pkgs=$(printf '%s\n' "${missing[@]}" "${extra[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing Debian packages: $pkgs (run as root, or: sudo apt-get install $pkgs)" >&2
  exit 1
fi
echo "deps: installing $pkgs" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
