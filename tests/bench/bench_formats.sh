#!/usr/bin/env bash
# Reading each format sequentially: keel convert -O raw versus qemu-img
# convert -O raw, on the same 2 GiB image with real filesystem content
# (night0 of make-nightlies.sh), converted to each format by qemu-img.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nightlies.sh"
need qemu-img
ensure_nightlies || exit 0
d=$BENCH_DIR/formats
rm -rf "$d"; mkdir -p "$d"
src=$NIGHTS_DIR/night0.raw
row "read whole image -> raw" "keel (s)" "qemu-img" "k/q"
for spec in qcow2:qcow2 qcow2-zstd:qcow2:-c,-o,compression_type=zstd vmdk:vmdk vmdk-stream:vmdk:-o,subformat=streamOptimized vpc:vpc vhdx:vhdx vdi:vdi; do
	IFS=: read -r name fmt extra <<<"$spec"
	"$KEEL" help formats | awk '{print $1}' | grep -qx "${fmt/vpc/vhd}" || { row "$name" "-" "-" "no driver"; continue; }
	img=$d/img.$name
	qemu-img convert -f raw -O $fmt ${extra//,/ } "$src" "$img" >/dev/null 2>&1 || { row "$name" "-" "-" "qemu-img failed"; continue; }
	timeit k "$KEEL" -q convert -f "${fmt/vpc/vhd}" -O raw "$img" "$d/k.raw"
	timeit q qemu-img convert -m 8 -W -f $fmt -O raw "$img" "$d/q.raw"
	cmp -s "$d/k.raw" "$d/q.raw" || echo "MISMATCH: $name"
	row "$name" "$k" "$q" "$(ratio $k $q)"
	rm -f "$img" "$d/k.raw" "$d/q.raw"
done
rm -rf "$d"
