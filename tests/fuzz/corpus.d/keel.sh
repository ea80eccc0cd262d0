#!/usr/bin/env bash
# Seeds for fuzz_keel and fuzz_keel_meta: small .keel images with data,
# snapshots, zero and compressed clusters, dedup and encryption, made by keel.
set -eu
out=$1/keel w=$2
meta=$1/keel_meta
mkdir -p "$out" "$meta"
k() { "$KEEL" -q "$@"; }
printf 'fuzz-pass' > "$w/pass"
for cs in 4K 64K; do
	for comp in zstd zlib none; do
		for extra in "" ",dedup=on" ",dedup=on,encrypt=on"; do
			f=$w/s-$cs-$comp${extra//[,=]/_}.keel
			k create -o cluster_size=$cs,compression=$comp$extra --key-file "$w/pass" "$f" 2M
			k io --key-file "$w/pass" -c 'write -P 0x41 0 100k' -c 'write -z 200k 64k' \
				-c 'write -P 0x41 1M 64k' -c 'write -P 7 1500k 5000' "$f"
			k snapshot create --key-file "$w/pass" "$f" one
			k io --key-file "$w/pass" -c 'write -P 0x42 50k 10k' -c 'discard 1M 64k' "$f"
			cp "$f" "$out/"
		done
	done
done
# the key-slot table and dedup index of one image, as the meta fuzzer sees them
python3 - "$w/s-4K-zstd_dedup_on_encrypt_on.keel" "$meta" <<'PY'
import struct, sys
img, out = sys.argv[1], sys.argv[2]
data = open(img, 'rb').read()
best = max((data[0:4096], data[4096:8192]), key=lambda h: struct.unpack_from('<Q', h, 40)[0])
dd_addr, _, dd_len = struct.unpack_from('<QII', best, 208)
cr_addr, _, cr_len = struct.unpack_from('<QII', best, 224)
if cr_addr:
    open(out + '/keyslots', 'wb').write(b'\x01' + data[cr_addr:cr_addr + cr_len])
if dd_addr:
    open(out + '/dedup', 'wb').write(b'\x00' + data[dd_addr:dd_addr + dd_len])
PY
