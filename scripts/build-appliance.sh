#!/usr/bin/env bash
# scripts/build-appliance.sh - build keel's verifier appliance from Debian packages.
#
#   scripts/build-appliance.sh OUTDIR MKCPIO
#
# Produces, in OUTDIR (e.g. build/appliance):
#   vmlinuz       the distribution kernel (bzImage)
#   vmlinux       the same kernel uncompressed (ELF with a PVH entry note); a
#                 direct 64-bit/PVH entry skips firmware and decompression
#   initrd.cpio   an uncompressed newc initramfs: busybox-static, the modules
#                 for virtio-pci (legacy + modern), virtio-blk, ext4, xfs, vfat
#                 with their dependencies, e2fsck/blkid (+ xfs_repair, fsck.fat
#                 when the host has them) with their libraries, and vmm/appliance/init
#   MANIFEST      what went in
#
# Nothing is installed on the host: the packages are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` under OUTDIR/work.
# MKCPIO is the libarchive-based packer the Makefile builds (scripts/mkcpio.c).
# Environment: KEEL_KERNEL_PKG names the kernel package (default: what
# linux-image-amd64 depends on); KEEL_APPLIANCE_DEBS a folder already holding
# the .deb files (offline builds).
set -euo pipefail

OUT=${1:?usage: build-appliance.sh OUTDIR MKCPIO}
MKCPIO=${2:?usage: build-appliance.sh OUTDIR MKCPIO}
SRC=$(cd "$(dirname "$0")/.." && pwd)
export PATH=$PATH:/usr/sbin:/sbin
die() { echo "build-appliance: $*" >&2; exit 1; }

for t in apt-get dpkg-deb depmod xz; do
	command -v $t >/dev/null || die "missing tool '$t' (Debian: apt-get install dpkg apt kmod xz-utils)"
done
[ -x "$MKCPIO" ] || die "missing $MKCPIO (make builds it)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
rm -rf "$WORK"
mkdir -p "$WORK/debs" "$WORK/pkg" "$WORK/root"
trap 'rm -rf "$WORK"' EXIT

# ---- fetch --------------------------------------------------------------
KPKG=${KEEL_KERNEL_PKG:-}
if [ -z "$KPKG" ]; then
	KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
		awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
fi
[ -n "$KPKG" ] || die "cannot find the kernel package behind linux-image-amd64 (apt-get update?)"
if [ -n "${KEEL_APPLIANCE_DEBS:-}" ]; then
	cp "$KEEL_APPLIANCE_DEBS"/*.deb "$WORK/debs/"
else
	fetch() { (cd "$WORK/debs" && apt-get download "$@" >/dev/null 2>"$WORK/apt.err"); }
	if ! fetch "$KPKG" busybox-static; then
		# the package lists may be stale; refresh once when we may
		[ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 || true
		fetch "$KPKG" busybox-static || { cat "$WORK/apt.err" >&2; die "apt-get download failed"; }
	fi
fi
for d in "$WORK"/debs/*.deb; do
	dpkg-deb -x "$d" "$WORK/pkg"
done
KVER=$(ls "$WORK/pkg/lib/modules" | head -n 1)
[ -n "$KVER" ] || die "kernel package has no /lib/modules"
MODDIR=$WORK/pkg/lib/modules/$KVER
BZIMAGE=$WORK/pkg/boot/vmlinuz-$KVER
BUSYBOX=$WORK/pkg/bin/busybox
[ -f "$BZIMAGE" ] || die "no $BZIMAGE in $KPKG"
[ -x "$BUSYBOX" ] || die "no busybox in busybox-static"
# the package's postinst runs depmod on install; we run it on our unpacked copy
depmod -b "$WORK/pkg" "$KVER"

# ---- vmlinux from the bzImage payload ------------------------------------
# setup_sects at 0x1f1, payload_offset/payload_length at 0x248/0x24c (boot protocol 2.08+)
rd() { od -An -tu"$3" -j "$2" -N "$3" "$1" | tr -d ' '; }
ss=$(rd "$BZIMAGE" $((0x1f1)) 1)
[ "$ss" = 0 ] && ss=4
poff=$(( (ss + 1) * 512 + $(rd "$BZIMAGE" $((0x248)) 4) ))
plen=$(rd "$BZIMAGE" $((0x24c)) 4)
magic=$(od -An -tx1 -j "$poff" -N 4 "$BZIMAGE" | tr -d ' ')
payload() { tail -c +$((poff + 1)) "$BZIMAGE" | head -c "$plen"; }
case $magic in
fd377a58) payload | xz -dc >"$WORK/vmlinux" 2>/dev/null || true ;;
28b52ffd) payload | zstd -dc >"$WORK/vmlinux" 2>/dev/null || true ;;
1f8b*) payload | gzip -dc >"$WORK/vmlinux" 2>/dev/null || true ;;
*) echo "build-appliance: unknown payload compression ($magic); no vmlinux" >&2 ;;
esac
if [ -s "$WORK/vmlinux" ] && [ "$(head -c 4 "$WORK/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
	mv "$WORK/vmlinux" "$OUT/vmlinux.new"
else
	rm -f "$WORK/vmlinux"
	echo "build-appliance: could not extract vmlinux; the bzImage entry will be used" >&2
fi

# ---- modules -------------------------------------------------------------
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,sbin,proc,sys,dev,mnt,tmp,etc,lib/modules}
ORDER=$WORK/order
: >"$ORDER"
path_of() { # module name -> path in modules.dep ('-' and '_' are the same)
	awk -F: -v n="$(echo "$1" | tr - _)" '{ b = $1; sub(/.*\//, "", b); sub(/\.ko.*$/, "", b);
		gsub(/-/, "_", b); if (b == n) { print $1; exit } }' "$MODDIR/modules.dep"
}
alias_of() { awk -v a="$1" '$1 == "alias" && $2 == a { print $3 }' "$MODDIR/modules.alias"; }
add_mod() { # depth first: softdep "pre:" modules, hard dependencies, the module
	local p b s t d
	p=$(path_of "$1")
	if [ -z "$p" ]; then
		grep -q "/$(echo "$1" | tr _ -)\.ko\|/$1\.ko" "$MODDIR/modules.builtin" 2>/dev/null ||
			echo "build-appliance: note: module $1 not found (built in?)" >&2
		return 0
	fi
	grep -qx "$p" "$ORDER" && return 0
	b=$(basename "$p" | sed 's/\.ko.*//')
	for s in $(awk -v m="$b" '$1 == "softdep" && $2 == m { pre = 0
			for (i = 3; i <= NF; i++) { if ($i == "pre:") { pre = 1; continue }
				if ($i == "post:") pre = 0; else if (pre) print $i } }' "$MODDIR/modules.softdep"); do
		if [ -n "$(path_of "$s")" ]; then add_mod "$s"; else
			for t in $(alias_of "$s"); do
				# crc32c-intel needs SSE4.2, which a baseline vCPU lacks
				case $t in crc32c_intel) continue ;; esac
				add_mod "$t"
			done
		fi
	done
	for d in $(awk -F: -v p="$p" '$1 == p { print $2 }' "$MODDIR/modules.dep"); do
		add_mod "$(basename "$d" | sed 's/\.ko.*//')"
	done
	grep -qx "$p" "$ORDER" || echo "$p" >>"$ORDER"
}
for m in virtio_pci virtio_blk crc32c_generic ext4 xfs vfat nls_cp437 nls_ascii; do
	add_mod "$m"
done
: >"$ROOT/etc/modules"
while read -r p; do
	b=$(basename "$p")
	case $b in
	*.ko.xz) xz -dc "$MODDIR/$p" >"$ROOT/lib/modules/${b%.xz}"; b=${b%.xz} ;;
	*.ko.zst) zstd -qdc "$MODDIR/$p" >"$ROOT/lib/modules/${b%.zst}"; b=${b%.zst} ;;
	*.ko.gz) gzip -dc "$MODDIR/$p" >"$ROOT/lib/modules/${b%.gz}"; b=${b%.gz} ;;
	*) cp "$MODDIR/$p" "$ROOT/lib/modules/$b" ;;
	esac
	echo "$b" >>"$ROOT/etc/modules"
done <"$ORDER"
for need in virtio_pci.ko virtio_blk.ko ext4.ko; do
	grep -qx "$need" "$ROOT/etc/modules" || die "module $need missing from the appliance"
done

# ---- userland --------------------------------------------------------------
cp "$BUSYBOX" "$ROOT/bin/busybox"
for a in $("$BUSYBOX" --list); do
	[ "$a" = busybox ] || ln -sf busybox "$ROOT/bin/$a"
done
copy_tool() { # host binary + the shared libraries it loads
	local t=$1 l
	[ -x "$t" ] || return 1
	cp -L "$t" "$ROOT/sbin/"
	for l in $(ldd "$t" | awk '/=>/ { print $3 } /^[[:space:]]*\// { print $1 }'); do
		[ -f "$l" ] || continue
		mkdir -p "$ROOT$(dirname "$l")"
		[ -e "$ROOT$l" ] || cp -L "$l" "$ROOT$l"
	done
}
copy_tool /sbin/e2fsck || die "e2fsck not found (apt-get install e2fsprogs)"
copy_tool /sbin/blkid || die "blkid not found (apt-get install util-linux)"
copy_tool /sbin/xfs_repair || echo "build-appliance: note: no xfs_repair; xfs is mounted, not checked" >&2
copy_tool /sbin/fsck.fat || echo "build-appliance: note: no fsck.fat; vfat is mounted, not checked" >&2
mkdir -p "$ROOT/lib64"
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$ROOT/lib64/"
install -m 0755 "$SRC/vmm/appliance/init" "$ROOT/init"

# ---- pack and publish (each file renamed into place) -------------------------
"$MKCPIO" "$ROOT" "$OUT/initrd.cpio.new"
cp "$BZIMAGE" "$OUT/vmlinuz.new"
{
	echo "kernel $KPKG $KVER"
	echo "busybox $(ls "$WORK"/debs/busybox-static_*.deb | xargs -n1 basename)"
	echo "initrd $(stat -c %s "$OUT/initrd.cpio.new") bytes"
	echo "modules $(tr '\n' ' ' <"$ROOT/etc/modules")"
	echo "tools $(ls "$ROOT/sbin" | tr '\n' ' ')"
} >"$OUT/MANIFEST.new"
[ -e "$OUT/vmlinux.new" ] && mv "$OUT/vmlinux.new" "$OUT/vmlinux"
mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"
mv "$OUT/initrd.cpio.new" "$OUT/initrd.cpio"
mv "$OUT/MANIFEST.new" "$OUT/MANIFEST"
echo "build-appliance: $OUT ($KVER, $(wc -l <"$ROOT/etc/modules") modules)"
