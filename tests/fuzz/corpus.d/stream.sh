#!/usr/bin/env bash
# tests/fuzz/corpus.d/stream.sh OUTDIR WORKDIR - seeds for fuzz_stream (keel
# send streams: full, incremental, from a zlib, dedup, 4 KiB-cluster image, and one keyed
# with the passphrase "fuzz"; the first byte picks fuzz_stream's mode, 1 =
# receive with that key) and for fuzz_proto (the header and trailer payloads
# cut from those streams, behind their decoder's selector byte, and keel://
# URLs).
set -eu
out=$1 w=$2/stream
: "${KEEL:=$PWD/build/keel}"
mkdir -p "$out/stream" "$out/proto" "$w"
k() { "$KEEL" -q "$@" >/dev/null; }
k create -f keel "$w/s.keel" 1M
k io -c "write -P 0x61 0 100k" -c "write -z 300k 64k" "$w/s.keel"
k snapshot -c a "$w/s.keel"
k io -c "write -P 0x62 500k 10k" -c "discard 0 64k" "$w/s.keel"
k snapshot -c b "$w/s.keel"
k send -o "$w/full.st" "$w/s.keel@b"
k send -i a -o "$w/inc.st" "$w/s.keel@b"
FUZZ_PASS=fuzz k send --key-env FUZZ_PASS -o "$w/key.st" "$w/s.keel@b"
k create -f keel -o compression=zlib,dedup=on,cluster_size=4K "$w/z.keel" 512K
k io -c "write -P 0x63 4k 200k" "$w/z.keel"
k snapshot -c only "$w/z.keel"
k send -o "$w/z.st" "$w/z.keel@only"
python3 - "$w" "$out" <<'PY'
import struct, sys
w, out = sys.argv[1:3]
def records(d):
    p = 0
    while p + 32 <= len(d):
        bl, ty = struct.unpack('<IH', d[p:p + 6])
        yield ty, d[p + 32:p + 32 + bl - 16]
        p += 32 + bl
for name, mode in (('full', 0), ('inc', 0), ('z', 0), ('key', 1), ('full', 1)):
    d = open('%s/%s.st' % (w, name), 'rb').read()
    open('%s/stream/%s-%d' % (out, name, mode), 'wb').write(bytes([mode]) + d)
    if mode == 0:
        recs = list(records(d))
        open('%s/proto/%s-header' % (out, name), 'wb').write(bytes([8]) + recs[0][1])
        open('%s/proto/%s-trailer' % (out, name), 'wb').write(bytes([9]) + recs[-1][1])
for i, url in enumerate((b'keel://dr.example:7457/web@night-3', b'keel://[::1]/vm', b'keel://host/a/b')):
    open('%s/proto/url-%d' % (out, i), 'wb').write(bytes([7]) + url)
PY
