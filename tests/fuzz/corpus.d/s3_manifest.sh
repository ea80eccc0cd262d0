#!/usr/bin/env bash
# seeds for fuzz_s3_manifest: decrypted manifests (replicate/S3-LAYOUT.md)
set -eu
out=$1/s3_manifest
mkdir -p "$out"
python3 - "$out" <<'PY'
import struct, sys
out = sys.argv[1]
def s(b): return struct.pack("<H", len(b)) + b
def manifest(vsize, runs, cs=65536, name=b"night-1"):
    n = (vsize + cs - 1) // cs
    b = b"KS3MAN01" + struct.pack("<IIII", 1, 0, cs, 0)
    b += struct.pack("<QQQ", vsize, 1700000000 * 10**9, 1700000100 * 10**9) + bytes(range(16))
    b += s(name) + s(b"vm.raw") + s(b"raw") + struct.pack("<QQ", n, len(runs))
    for kind, cnt in runs:
        b += struct.pack("<BQ", kind, cnt)
        if kind == 1:
            b += b"".join(bytes([i % 256]) * 32 for i in range(cnt))
    return b
seeds = {
    "empty": manifest(0, []),
    "zeros": manifest(10 * 65536, [(0, 10)]),
    "mixed": manifest(10 * 65536 - 100, [(1, 3), (0, 5), (1, 2)]),
    "small-chunks": manifest(8 * 4096, [(1, 8)], cs=4096),
    "big-sparse": manifest(1 << 40, [(0, (1 << 40) // 65536)]),
}
for k, v in seeds.items():
    open("%s/%s" % (out, k), "wb").write(v)
PY
