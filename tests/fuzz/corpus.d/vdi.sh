#!/usr/bin/env bash
# tests/fuzz/corpus.d/vdi.sh OUTDIR WORKDIR - seeds for fuzz_vdi: VDIs from
# qemu-img and keel, and hand-made small ones with 4 KiB blocks holding
# allocated, free and zero map entries (and a differencing header), so the
# seeds stay small while covering every map entry kind.
set -eu
out=$1/vdi
w=$2/vdi
: "${KEEL:=$PWD/build/keel}"
mkdir -p "$out" "$w"
"$KEEL" create -f vdi "$w/keel-empty.vdi" 16M >/dev/null
head -c 4096 "$w/keel-empty.vdi" >"$out/keel-empty-head.vdi"
if command -v qemu-img >/dev/null; then
	qemu-img create -q -f vdi "$out/qemu-dyn.vdi" 8M
	qemu-img create -q -f vdi -o static=on "$w/qemu-static.vdi" 2M
	head -c 2048 "$w/qemu-static.vdi" >"$out/qemu-static-head.vdi"
fi
python3 - "$out" <<'PY'
import struct, sys, uuid
out = sys.argv[1]
def vdi(name, typ, entries, link=b'\0' * 16):
    bs, n = 4096, len(entries)
    h = bytearray(512)
    h[0:32] = b'<<< keel fuzz seed VDI >>>\n'.ljust(32, b'\0')
    struct.pack_into('<IIII', h, 0x40, 0xBEDA107F, 0x00010001, 0x190, typ)
    struct.pack_into('<II', h, 0x154, 512, 1024)
    struct.pack_into('<I', h, 0x168, 512)
    struct.pack_into('<QIIII', h, 0x170, n * bs - 100, bs, 0, n,
                     sum(1 for e in entries if e < 0xFFFFFFFE))
    h[0x188:0x198] = uuid.UUID(int=0x1234).bytes_le
    h[0x198:0x1a8] = uuid.UUID(int=0x5678).bytes_le
    h[0x1a8:0x1b8] = link
    m = bytearray(512)
    for i, e in enumerate(entries):
        struct.pack_into('<I', m, 4 * i, e)
    nalloc = max([e + 1 for e in entries if e < 0xFFFFFFFE] + [0])
    data = b''.join(bytes([0x40 + i]) * bs for i in range(nalloc))
    open(f'{out}/{name}.vdi', 'wb').write(bytes(h) + bytes(m) + data)
vdi('mixed', 1, [1, 0xFFFFFFFF, 0, 0xFFFFFFFE, 2, 0xFFFFFFFF])
vdi('fixed', 2, [0, 1, 2, 3])
vdi('diff', 4, [0xFFFFFFFF, 0, 0xFFFFFFFE], uuid.UUID(int=0x9999).bytes_le)
PY
exit 0
