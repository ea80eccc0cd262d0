#!/usr/bin/env bash
# scripts/deps.sh - make sure everything keel builds and tests with is here.
#
# Idempotent: checks each dependency (pkg-config module or command); when
# something is missing and we are root, runs `apt-get update` once and
# installs the Debian packages by name; otherwise prints the exact
# apt-get line and exits non-zero. Set KEEL_DEPS_EXTRA=0 to skip the
# optional test peers (libyal readers, QEMU system emulator, borg, restic).
set -u

missing=()
need_pkg() { pkg-config --exists "$1" 2>/dev/null || missing+=("$2"); }
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need_file() { [ -e "$1" ] || missing+=("$2"); }

need_cmd cc build-essential
need_cmd make build-essential
need_cmd pkg-config pkg-config
need_cmd clang clang
need_pkg zlib zlib1g-dev
need_pkg libzstd libzstd-dev
need_pkg libarchive libarchive-dev
need_pkg libssl libssl-dev
need_pkg uuid uuid-dev
need_pkg check check
need_pkg libxml-2.0 libxml2-dev
need_pkg libcurl libcurl4-openssl-dev
need_pkg libdeflate libdeflate-dev
need_cmd qemu-img qemu-utils
need_cmd xmllint libxml2-utils
need_cmd zstd zstd
need_cmd openssl openssl
need_cmd sfdisk fdisk
need_cmd mkfs.ext4 e2fsprogs
need_cmd mkfs.vfat dosfstools
need_cmd cppcheck cppcheck
need_cmd strace strace
need_file /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a libclang-rt-14-dev
if [ "${KEEL_DEPS_EXTRA:-1}" != 0 ]; then
	need_cmd qcowinfo libqcow-utils
	# the libyal *mount tools need it to unmount; without it the byte checks skip
	need_cmd fusermount fuse
	need_cmd vmdkinfo libvmdk-utils
	need_cmd vhdiinfo libvhdi-utils
	need_cmd qemu-system-x86_64 qemu-system-x86
	# LUKS1 images formatted by cryptsetup (test_luks.sh; no root needed to format a file)
	need_cmd cryptsetup cryptsetup-bin
	need_cmd busybox busybox-static
	need_cmd mkfs.xfs xfsprogs
	need_cmd depmod kmod
	need_cmd mcopy mtools
	need_cmd borg borgbackup
	need_cmd restic restic
	need_cmd hyperfine hyperfine
fi

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
# unique, stable order
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++')
if [ "$(id -u)" -eq 0 ]; then
	echo "deps: installing ${pkgs[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2 || { echo "deps: apt-get update failed" >&2; exit 1; }
	apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 ||
		{ echo "deps: apt-get install failed" >&2; exit 1; }
	exit 0
fi
echo "deps: missing packages; run as root:" >&2
echo "  apt-get install ${pkgs[*]}" >&2
exit 1
