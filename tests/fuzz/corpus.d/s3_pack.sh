#!/usr/bin/env bash
# seeds for fuzz_s3_pack: selector byte, then a sealed object, blob or config
set -eu
out=$1/s3_pack
mkdir -p "$out"
python3 - "$out" <<'PY'
import os, struct, sys
out = sys.argv[1]
r = os.urandom
hdr = lambda t, plain: b"KS3O" + bytes([t, 1]) + struct.pack("<HQ", 1, plain)
open(out + "/manifest", "wb").write(b"\0" + hdr(1, 100) + r(60))
open(out + "/index", "wb").write(b"\1" + hdr(2, 48) + r(80))
open(out + "/blob-stored", "wb").write(b"\2" + r(32) + struct.pack("<I", 100) + b"\0" + r(100 + 28))
open(out + "/blob-zstd", "wb").write(b"\2" + r(32) + struct.pack("<I", 65536) + b"\1" + r(60))
cfg = bytearray(b"KEELS3R1" + struct.pack("<II", 1, 65536) + r(16) + bytes([1, 15, 0, 0]) + struct.pack("<II", 8, 1) + r(32 + 60))
import zlib
open(out + "/config", "wb").write(b"\3" + bytes(cfg) + b"\0\0\0\0")
PY
