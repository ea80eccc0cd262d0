#!/usr/bin/env bash
# seeds for fuzz_s3_index: byte 0 even = index, odd = gc mark, then the plaintext
set -eu
out=$1/s3_index
mkdir -p "$out"
python3 - "$out" <<'PY'
import struct, sys
out = sys.argv[1]
def index(entries):
    b = b"KS3IDX01" + struct.pack("<II", 1, len(entries)) + b"\xab" * 32
    for i, (off, ln, plain) in enumerate(entries):
        b += bytes([i]) * 32 + struct.pack("<QII", off, ln, plain)
    return b
def mark(n):
    return b"KS3MRK01" + struct.pack("<II", 1, n) + b"".join(bytes([i]) * 32 for i in range(n))
open(out + "/index-empty", "wb").write(b"\0" + index([]))
open(out + "/index-3", "wb").write(b"\0" + index([(8, 100, 65536), (108, 65565, 65536), (65673, 40, 4096)]))
open(out + "/mark-0", "wb").write(b"\1" + mark(0))
open(out + "/mark-3", "wb").write(b"\1" + mark(3))
PY
