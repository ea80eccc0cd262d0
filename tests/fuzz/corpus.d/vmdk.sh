#!/usr/bin/env bash
# tests/fuzz/corpus.d/vmdk.sh OUTDIR WORKDIR - seeds for fuzz_vmdk (single-file
# VMDKs: monolithicSparse, streamOptimized, vmfsSparse, seSparse) and fuzz_vmdk_desc (descriptors),
# made small by keel and qemu-img.
set -eu
out=$1 w=$2/vmdk
: "${KEEL:=$PWD/build/keel}"
mkdir -p "$out/vmdk" "$out/vmdk_desc" "$w"
python3 - "$w/src.raw" <<'PY'
import random, sys
r = random.Random(3)
b = bytearray(1 << 20)
for off in (0, 70000, 300000, 900000):
    b[off:off + 20000] = r.randbytes(20000)
b[500000:520000] = b'keel fuzz text\n' * 1333 + b'k' * 5
open(sys.argv[1], 'wb').write(b)
PY
n=0
seed() { n=$((n + 1)); cp "$1" "$out/vmdk/$n-$(basename "$1")"; }
for opt in "subformat=monolithicSparse,grain_size=4K" "subformat=streamOptimized,grain_size=4K" \
	"zeroed_grain=on,grain_size=8K" "subformat=streamOptimized" "subformat=monolithicSparse"; do
	f="$w/k$n.vmdk"
	"$KEEL" convert -O vmdk -o "$opt" "$w/src.raw" "$f" >/dev/null
	[ "$(stat -c %s "$f")" -le 1048576 ] && seed "$f"
done
"$KEEL" create -f vmdk -o grain_size=4K "$w/base.vmdk" 1M >/dev/null
"$KEEL" create -f vmdk -o grain_size=4K -b base.vmdk "$w/child.vmdk" >/dev/null
"$KEEL" io -f vmdk -c "write -P 0x5a 4096 8192" "$w/child.vmdk" >/dev/null
seed "$w/child.vmdk"
if command -v qemu-img >/dev/null; then
	for sf in monolithicSparse streamOptimized; do
		qemu-img convert -f raw -O vmdk -o subformat=$sf "$w/src.raw" "$w/q-$sf.vmdk"
		seed "$w/q-$sf.vmdk"
	done
	qemu-img convert -f raw -O vmdk -o zeroed_grain=on "$w/src.raw" "$w/q-zg.vmdk"
	qemu-io -f vmdk -c 'write -z 0 64k' "$w/q-zg.vmdk" >/dev/null
	seed "$w/q-zg.vmdk"
	for sf in monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat; do
		qemu-img create -q -f vmdk -o subformat=$sf "$w/d-$sf.vmdk" 3G
		cp "$w/d-$sf.vmdk" "$out/vmdk_desc/$sf.txt"
	done
fi
gzip -dc tests/interop/data/ext2.vmdk.gz > "$w/ext2.vmdk" && seed "$w/ext2.vmdk"
# embedded descriptors as text seeds
for f in "$out"/vmdk/*; do
	dd if="$f" bs=512 skip=1 count=20 2>/dev/null | tr -d '\0' > "$out/vmdk_desc/$(basename "$f").txt"
done
printf '# Disk DescriptorFile\r\nversion=3\r\nCID=0000000a\r\nparentCID=1b2c3d4e\r\ncreateType="vmfs"\r\nparentFileNameHint="a b.vmdk"\r\nRW 100 VMFS "x y-flat.vmdk"\r\nRDONLY 8 ZERO\r\nNOACCESS 9 FLAT "z" 77\r\nddb.uuid = "60 00"\r\n' \
	> "$out/vmdk_desc/crlf.txt"
# vmfsSparse (COWD) extents alone, as ESXi deltas hold them (no writer here: the test generator)
python3 tests/common/mkcowd.py "$out/vmdk/cowd-g1" 4096 1 5
python3 tests/common/mkcowd.py "$out/vmdk/cowd-g8" 20000 8 6
# seSparse extents alone (VMFS 6 deltas; the test generator again)
python3 tests/common/mksesparse.py "$out/vmdk/sesparse-1" 4096 7
python3 tests/common/mksesparse.py "$out/vmdk/sesparse-2" 300000 8
