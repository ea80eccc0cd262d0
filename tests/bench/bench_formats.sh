#!/usr/bin/env bash
# Reading each format sequentially: keel convert -O raw versus qemu-img
# convert -O raw, on the same 2 GiB image with real filesystem content
# (night0 of make-nightlies.sh), converted to each format by qemu-img.
#
# Each row runs BENCH_RUNS rounds (default 3), keel and qemu-img taking turns
# at going first, the image read into the page cache and `sync` before each
# timed run; it prints medians. keel fsyncs its output (and writes it
# O_DIRECT); qemu-img's default does neither (cache mode "unsafe": its
# output may still be in the page cache, and the writeback it leaves can
# land on whatever runs next), so the row also times qemu-img -t none
# (O_DIRECT, flushed): k/q compares the defaults, k/q_dur the durable runs.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nightlies.sh"
need qemu-img
ensure_nightlies || exit 0
d=$BENCH_DIR/formats
rm -rf "$d"; mkdir -p "$d"
src=$NIGHTS_DIR/night0.raw
runs=${BENCH_RUNS:-3}
printf '%-28s %10s %10s %10s %7s %7s\n' "read whole image -> raw" "keel (s)" "qemu-img" \
	"qemu -t none" "k/q" "k/q_dur"
for spec in qcow2:qcow2 qcow2-zstd:qcow2:-c,-o,compression_type=zstd vmdk:vmdk vmdk-stream:vmdk:-o,subformat=streamOptimized vpc:vpc vhdx:vhdx vdi:vdi; do
	IFS=: read -r name fmt extra <<<"$spec"
	"$KEEL" help formats | awk '{print $1}' | grep -qx "${fmt/vpc/vhd}" || { row "$name" "-" "-" "no driver"; continue; }
	img=$d/img.$name
	qemu-img convert -f raw -O $fmt ${extra//,/ } "$src" "$img" >/dev/null 2>&1 || { row "$name" "-" "-" "qemu-img failed"; continue; }
	ks=() qs=() ns=()
	for r in $(seq "$runs"); do
		for who in $( [ $((r % 2)) = 1 ] && echo "k q n" || echo "q n k"); do
			rm -f "$d/out.raw"
			cat "$img" >/dev/null
			case $who in
			k) timeit t "$KEEL" -q convert -f "${fmt/vpc/vhd}" -O raw "$img" "$d/out.raw" && ks+=("$t")
			   [ "$r" = 1 ] && mv "$d/out.raw" "$d/k.raw" ;;
			q) timeit t qemu-img convert -m 8 -W -f $fmt -O raw "$img" "$d/out.raw" && qs+=("$t")
			   [ "$r" = 1 ] && mv "$d/out.raw" "$d/q.raw" ;;
			n) timeit t qemu-img convert -t none -m 8 -W -f $fmt -O raw "$img" "$d/out.raw" && ns+=("$t") ;;
			esac
		done
	done
	cmp -s "$d/k.raw" "$d/q.raw" || echo "MISMATCH: $name"
	k=$(printf '%s\n' "${ks[@]}" | median) q=$(printf '%s\n' "${qs[@]}" | median)
	n=$(printf '%s\n' "${ns[@]}" | median)
	printf '%-28s %10s %10s %10s %7s %7s\n' "$name" "$k" "$q" "$n" "$(ratio "$k" "$q")" \
		"$(ratio "$k" "$n")"
	rm -f "$img" "$d/k.raw" "$d/q.raw" "$d/out.raw"
done
echo "# ratios: k/q keel (durable) / qemu-img default (unflushed); k/q_dur both durable"
rm -rf "$d"
