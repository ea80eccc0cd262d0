#!/usr/bin/env bash
# tests/fuzz/corpus.d/qcow2.sh OUTDIR WORKDIR - small qcow2 seeds: several
# cluster sizes and refcount widths, v2 and v3, zlib and zstd compressed,
# extended L2, zero clusters, and (when qemu-img is there) a snapshot.
set -eu
out=$1/qcow2
w=$2/qcow2
: "${KEEL:=$PWD/build/keel}"
mkdir -p "$out" "$w"
i=0
seed() { # seed CREATE-OPTS IO-ARGS...
	local o=$1; shift
	i=$((i + 1))
	"$KEEL" -q create -f qcow2 ${o:+-o "$o"} "$w/s$i.qcow2" 256K >/dev/null
	"$KEEL" -q io "$@" "$w/s$i.qcow2" >/dev/null
	cp "$w/s$i.qcow2" "$out/seed-$i.qcow2"
}
io=(-c "write -P 0x61 0 3000" -c "write -P 0x62 70000 20000" -c "write -z 100000 8192" -c "discard 200000 4096")
seed cluster_size=512 "${io[@]}"
seed cluster_size=1K,refcount_bits=1 "${io[@]}"
seed cluster_size=4K,refcount_bits=64 "${io[@]}"
seed cluster_size=2K,compat=0.10 "${io[@]}"
seed cluster_size=1K,compress=on "${io[@]}"
seed cluster_size=4K,compress=on,compression_type=zstd "${io[@]}"
seed cluster_size=16K,extended_l2=on "${io[@]}"
if command -v qemu-img >/dev/null; then
	python3 -c "import random, sys; sys.stdout.buffer.write(random.Random(5).randbytes(200000))" >"$w/r.raw"
	tr '\0' 'k' </dev/zero | head -c 60000 >>"$w/r.raw"
	qemu-img convert -q -O qcow2 -o cluster_size=1K "$w/r.raw" "$w/q.qcow2"
	qemu-img snapshot -c one "$w/q.qcow2"
	qemu-io -c "write -P 0x33 1000 5000" "$w/q.qcow2" >/dev/null
	cp "$w/q.qcow2" "$out/qemu-snapshot.qcow2"
	qemu-img convert -q -c -O qcow2 -o cluster_size=2K,compression_type=zstd "$w/r.raw" "$out/qemu-zstd.qcow2"
	qemu-img convert -q -O qcow2 -o cluster_size=16K,extended_l2=on "$w/r.raw" "$out/qemu-xl2.qcow2"
fi
