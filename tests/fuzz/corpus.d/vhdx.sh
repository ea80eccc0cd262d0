#!/usr/bin/env bash
# tests/fuzz/corpus.d/vhdx.sh OUTDIR WORKDIR - seeds for fuzz_vhdx: small
# VHDX images from keel and qemu-img (dynamic, fixed, 4096-byte sectors,
# differencing with a sector bitmap, a pending log), squeezed into the
# compact layout fuzz_vhdx.c expands (see the comment there); a writable
# variant of each (last byte bit 0) is added too.
set -eu
out=$1/vhdx
w=$2/vhdx
: "${KEEL:=$PWD/build/keel}"
mkdir -p "$out" "$w"

"$KEEL" -q create -f vhdx -o block_size=1M "$w/dyn.vhdx" 8M
"$KEEL" -q io -c "write -P 0x61 0 1536K" -c "write -P 0x62 7M 4k" "$w/dyn.vhdx"
"$KEEL" -q create -f vhdx -o block_size=1M,logical_sector_size=4096 "$w/dyn4k.vhdx" 6M
"$KEEL" -q io -c "write -P 0x63 1M 8k" "$w/dyn4k.vhdx"
"$KEEL" -q create -f vhdx -o subformat=fixed,block_size=1M "$w/fixed.vhdx" 4M
"$KEEL" -q io -c "write -P 0x64 0 4k" "$w/fixed.vhdx"
"$KEEL" -q create -f vhdx -o block_size=1M,block_state_zero=on "$w/zero.vhdx" 8M
"$KEEL" -q create -f vhdx -o block_size=1M "$w/base.vhdx" 4M
"$KEEL" -q create -f vhdx -o block_size=1M -b base.vhdx "$w/diff.vhdx"
"$KEEL" -q io -c "write -P 0x65 4096 1024" -c "write -P 0x66 1M 1M" "$w/diff.vhdx"
if command -v qemu-img >/dev/null 2>&1; then
	head -c 3000000 /dev/zero | tr '\0' 'q' > "$w/q.raw"
	qemu-img convert -f raw -O vhdx -o block_size=1M "$w/q.raw" "$w/qemu-dyn.vhdx"
	qemu-img convert -f raw -O vhdx -o subformat=fixed,block_size=1M,block_state_zero=off \
		"$w/q.raw" "$w/qemu-fixed.vhdx" 2>/dev/null || true
fi

python3 - "$w" "$out" <<'PY'
import glob, os, struct, sys, uuid
w, out = sys.argv[1], sys.argv[2]
MiB = 1 << 20
T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF

def with_crc(b):
    b = bytearray(b); b[4:8] = bytes(4)
    b[4:8] = struct.pack('<I', crc32c(b)); return bytes(b)

# a keel image with a pending log: one entry rewriting the first BAT sector
# (block 1 -> ZERO) and zeroing 4 KiB of block 0; LogGuid set in both headers
img = bytearray(open(os.path.join(w, 'dyn.vhdx'), 'rb').read())
guid = uuid.uuid4().bytes
seq = 77
bat = bytearray(img[3 * MiB:3 * MiB + 4096]); bat[8:16] = struct.pack('<Q', 2)
hdr = bytearray(4096)
hdr[0:4] = b'loge'
struct.pack_into('<IIQI', hdr, 8, 8192, 0, seq, 2)
hdr[32:48] = guid
struct.pack_into('<QQ', hdr, 48, len(img), len(img) + MiB)
d = 64
hdr[d:d + 4] = b'desc'; hdr[d + 4:d + 8] = bat[4092:4096]; hdr[d + 8:d + 16] = bat[0:8]
struct.pack_into('<QQ', hdr, d + 16, 3 * MiB, seq)
d += 32
hdr[d:d + 4] = b'zero'; struct.pack_into('<QQQ', hdr, d + 8, 4096, 4 * MiB + 8192, seq)
data = bytearray(4096); data[0:4] = b'data'
struct.pack_into('<I', data, 4, seq >> 32); data[8:4092] = bat[8:4092]
struct.pack_into('<I', data, 4092, seq & 0xffffffff)
entry = with_crc(bytes(hdr) + bytes(data))
img[MiB:MiB + len(entry)] = entry
for h in (64 << 10, 128 << 10):
    hh = bytearray(img[h:h + 4096]); hh[48:64] = guid; img[h:h + 4096] = with_crc(hh)
open(os.path.join(w, 'log.vhdx'), 'wb').write(img)

# the compact layout of fuzz_vhdx.c: (file offset, length) of each piece
K = 1024
PIECES = [(0, 4 * K), (64 * K, 4 * K), (128 * K, 4 * K), (192 * K, 64 * K), (256 * K, 64 * K),
          (MiB, 64 * K), (2 * MiB, 128 * K), (3 * MiB, 128 * K)] + \
         [((4 + k) * MiB, 4 * K) for k in range(12)]

def squeeze(src, dst):
    f = open(src, 'rb').read()
    parts = []
    for at, n in PIECES:
        if at >= 4 * MiB and at >= len(f):
            break
        parts.append(f[at:at + n].ljust(n, b'\0'))
    b = bytearray(b''.join(parts))
    b[-1] &= 0xFC  # last byte: read-only open, CRCs recomputed by the harness
    open(dst, 'wb').write(b)

for p in sorted(glob.glob(os.path.join(w, '*.vhdx'))):
    d = os.path.join(out, os.path.basename(p))
    squeeze(p, d)
    b = bytearray(open(d, 'rb').read())
    b[-1] |= 1
    open(d + '.rw', 'wb').write(b)
PY
