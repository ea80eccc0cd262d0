#!/usr/bin/env bash
# tests/fuzz/corpus.d/vhd.sh OUTDIR WORKDIR - seeds for fuzz_vhd: small VHDs
# keel and qemu-img make (fixed, dynamic with small blocks, differencing,
# azure) and the interop samples made by Windows and qemu.
set -eu
out=$1/vhd
w=$2/vhd
: "${KEEL:=$PWD/build/keel}"
mkdir -p "$out" "$w"
k() { "$KEEL" "$@" >/dev/null; }
k create -f vhd -o block_size=4K "$w/dyn4k.vhd" 64K
k io -c 'write -P 0x11 0 4K' -c 'write -P 0x22 40K 6K' "$w/dyn4k.vhd"
k create -f vhd -o subformat=fixed,force_size=on "$w/fixed.vhd" 32K
k io -c 'write -P 0x33 512 1K' "$w/fixed.vhd"
k create -f vhd -o azure "$w/azure.vhd" 100K
k create -f vhd -o block_size=4K "$w/base.vhd" 64K
k create -f vhd -o block_size=4K -b base.vhd "$w/child.vhd"
k io -c 'write -P 0x44 1536 1K' -c 'write -P 0x55 20K 8K' "$w/child.vhd"
k create -f vhd "$w/dyn-empty.vhd" 10M
for f in "$w"/*.vhd; do cp "$f" "$out/keel-$(basename "$f")"; done
# regression: a current size near 2^64 once wrapped to 0 BAT entries and the
# next block-status query read a NULL BAT (checksums fixed so it gets there)
python3 - "$w/dyn4k.vhd" "$out/regress-wrap-size.vhd" <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
for off in (0, len(b) - 512):
    struct.pack_into('>Q', b, off + 48, 2**64 - (1 << 19))
    b[off + 64:off + 68] = bytes(4)
    struct.pack_into('>I', b, off + 64, ~sum(b[off:off + 512]) & 0xffffffff)
open(sys.argv[2], 'wb').write(bytes(b))
PY
if command -v qemu-img >/dev/null; then
	qemu-img create -q -f vpc "$out/qemu-dyn.vhd" 8M
	qemu-img create -q -f vpc -o force_size=on "$out/qemu-fs.vhd" 8M
	qemu-img create -q -f vpc -o subformat=fixed "$out/qemu-fixed.vhd" 64K
fi
for f in tests/interop/data/*.vhd.gz; do
	[ -e "$f" ] && gzip -dc "$f" >"$out/sample-$(basename "$f" .gz)"
done
exit 0
