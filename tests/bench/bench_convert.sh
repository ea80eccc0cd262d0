#!/usr/bin/env bash
# tests/bench/bench_convert.sh - keel convert against qemu-img convert, side
# by side in one run, on a 2 GiB image with real filesystem content
# (shared/bench/make-nightlies.sh's night0.raw; made when missing).
#
# Rows: raw->qcow2, raw->qcow2 zstd-compressed, raw->VMDK streamOptimized,
# qcow2->VHDX, VMDK->raw. qemu-img gets its fastest flags (-m 8, and -W
# where it accepts it). keel runs with its defaults (-j = number of CPUs)
# and, unlike qemu-img convert (whose destination cache mode defaults to
# "unsafe"), fsyncs its output before renaming it into place.
# Prints wall times, the keel/qemu-img ratio, the output sizes, and the CPU
# seconds (user + system) each tool used: on a machine shared with other
# work the wall-time ratio also measures the scheduler's share, the CPU
# time does not.
#
#   KEEL=build/keel tests/bench/bench_convert.sh
#   BENCH_IMG=/path/to/image.raw   another source image
#   BENCH_DIR=/tmp/...             scratch directory (about 8 GiB free)
set -u
: "${KEEL:=$PWD/build/keel}"
here=$(cd "$(dirname "$0")" && pwd)
img=${BENCH_IMG:-/tmp/anchors/img/night0.raw}
if [ ! -f "$img" ]; then
	gen=""
	for c in "$here/../../../shared/bench/make-nightlies.sh" /work/shared/bench/make-nightlies.sh; do
		[ -f "$c" ] && gen=$c && break
	done
	[ -n "$gen" ] || { echo "SKIP: no $img and no make-nightlies.sh"; exit 0; }
	echo "# generating $img with $gen (a few minutes)"
	bash "$gen" >/dev/null || { echo "SKIP: image generation failed"; exit 0; }
fi
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img not installed"; exit 0; }
dir=${BENCH_DIR:-$(mktemp -d /tmp/bench-convert.XXXXXX)}
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT

have() { "$KEEL" help formats | awk -v f="$1" '$1 == f && $2 == "yes"' | grep -q .; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
warm() { cat "$1" >/dev/null; }

printf '# source: %s (%s bytes, %s allocated), %s CPUs\n' "$img" "$(size_of "$img")" \
	"$(du -B1 "$img" | cut -f1)" "$(nproc)"
printf '%-28s %9s %9s %7s %13s %13s %7s %8s %8s\n' row keel_s qemu_s ratio keel_bytes qemu_bytes size \
	keel_cpu qemu_cpu
# prepared sources for the rows that do not start from raw (not timed)
qemu-img convert -m 8 -W -f raw -O qcow2 "$img" "$dir/src.qcow2"
qemu-img convert -m 8 -f raw -O vmdk -o subformat=streamOptimized "$img" "$dir/src.vmdk"

row() { # row NAME KEEL_FMT "KEEL_ARGS" "QEMU_ARGS" SRC SRCFMT EXT
	local name=$1 kfmt=$2 kargs=$3 qargs=$4 src=$5 sfmt=$6 ext=$7 t0 t1 kt qt ks qs
	if ! have "$kfmt"; then
		printf '%-28s %9s\n' "$name" "n/a (keel has no $kfmt writer yet)"
		return
	fi
	warm "$src"
	rm -f "$dir/k.$ext" "$dir/q.$ext"
	t0=$(now)
	# shellcheck disable=SC2086
	if ! /usr/bin/time -f '%U %S' -o "$dir/kcpu" "$KEEL" convert -f "$sfmt" $kargs "$src" \
		"$dir/k.$ext" >/dev/null 2>"$dir/err"; then
		printf '%-28s keel failed: %s\n' "$name" "$(head -1 "$dir/err")"
		return
	fi
	t1=$(now)
	kt=$(secs "$t0" "$t1")
	warm "$src"
	t0=$(now)
	# shellcheck disable=SC2086
	/usr/bin/time -f '%U %S' -o "$dir/qcpu" qemu-img convert \
		-f "$( [ "$sfmt" = vhd ] && echo vpc || echo "$sfmt")" $qargs "$src" "$dir/q.$ext" 2>/dev/null ||
		{ printf '%-28s %9s qemu-img failed\n' "$name" "$kt"; return; }
	t1=$(now)
	qt=$(secs "$t0" "$t1")
	ks=$(size_of "$dir/k.$ext")
	qs=$(size_of "$dir/q.$ext")
	printf '%-28s %9s %9s %7.2f %13s %13s %7.3f %8.2f %8.2f\n' "$name" "$kt" "$qt" \
		"$(awk -v a="$kt" -v b="$qt" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$ks" "$qs" \
		"$(awk -v a="$ks" -v b="$qs" 'BEGIN { print (b > 0 ? a / b : 0) }')" \
		"$(awk '{ print $1 + $2 }' "$dir/kcpu")" "$(awk '{ print $1 + $2 }' "$dir/qcpu")"
	rm -f "$dir/k.$ext" "$dir/q.$ext"
}

row "raw->qcow2" qcow2 "-O qcow2" "-m 8 -W -O qcow2" "$img" raw qcow2
row "raw->qcow2 zstd -c" qcow2 "-O qcow2 -o compression_type=zstd -c" \
	"-m 8 -W -c -O qcow2 -o compression_type=zstd" "$img" raw qcow2
row "raw->vmdk streamOptimized" vmdk "-O vmdk -o subformat=streamOptimized" \
	"-m 8 -O vmdk -o subformat=streamOptimized" "$img" raw vmdk
row "qcow2->vhdx" vhdx "-O vhdx" "-m 8 -W -O vhdx" "$dir/src.qcow2" qcow2 vhdx
row "vmdk->raw" raw "-O raw" "-m 8 -W -O raw" "$dir/src.vmdk" vmdk raw
echo "# goals: ratio <= 1.0 uncompressed rows, <= 0.4 compressed rows; size <= 1.03"
echo "# load average during the run: $(cut -d' ' -f1-3 /proc/loadavg)"
