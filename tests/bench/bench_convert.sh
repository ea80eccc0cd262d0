#!/usr/bin/env bash
# tests/bench/bench_convert.sh - keel convert against qemu-img convert, side
# by side in one run, on a 2 GiB image with real filesystem content
# (shared/bench/make-nightlies.sh's night0.raw; made when missing).
#
# Rows: raw->qcow2, raw->qcow2 zstd-compressed, raw->VMDK streamOptimized,
# qcow2->VHDX, VMDK->raw, and the encrypted outputs: a LUKS volume and a
# LUKS-encrypted qcow2. qemu-img gets its fastest flags (-m 8, and -W
# where it accepts it). keel runs with its defaults (-j = number of CPUs,
# -t direct) and, unlike qemu-img convert (whose destination cache mode
# defaults to "unsafe": nothing is flushed, the output may still be in the
# page cache when it exits), fsyncs its output before renaming it into
# place. So the uncompressed rows carry two like-for-like comparisons as
# well: qemu_dur_s is qemu-img -t none (O_DIRECT, flushed at close) against
# keel's default (r_dur), and keel_uns_s is keel -t unsafe (page cache, no
# fsync: qemu-img's default) against qemu-img's default (r_uns).
#
# Method: each row runs BENCH_RUNS times (default 5; once when qemu-img
# takes more than 20 s), keel and qemu-img alternating (odd rounds keel
# first, even rounds qemu-img first), and prints the medians. Before every timed run the source is read into the page cache
# and `sync` empties the dirty pages that earlier runs left behind, so no
# tool pays for another's writeback. Also prints the CPU seconds (user +
# system) of the median run: on a machine shared with other work the
# wall-time ratio also measures the scheduler's share, the CPU time does
# not. This virtual machine's disk and memory timings drift by +-30 %
# from minute to minute; compare ratios within one run, not across runs.
# Its balloon also hands free memory back to the host a few seconds after
# it is freed, so the page cache a tool fills may be cold (host page faults
# on every byte): 2 MiB-aligned buffered writes get exactly that memory and
# ran 4x slower (lib/io.c has the numbers). That is why the unflushed
# columns depended on which tool happened to write 2 MiB-aligned blocks.
#
#   KEEL=build/keel tests/bench/bench_convert.sh
#   BENCH_IMG=/path/to/image.raw   another source image
#   BENCH_DIR=/tmp/...             scratch directory (about 8 GiB free)
#   BENCH_RUNS=N                   runs per row (median)
#   BENCH_ONLY=TEXT                only the rows whose name holds TEXT
#   BENCH_GCE=0                    skip the GCE tar.gz row (its source takes ~35 s)
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

have() { "$KEEL" help formats | awk -v f="$1" '$1 == f && ($2 == "yes" || $2 == "key")' | grep -q .; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
warm() { cat "$1" >/dev/null; sync; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
runs=${BENCH_RUNS:-5}

printf '# source: %s (%s bytes, %s allocated), %s CPUs, %s runs per row (median)\n' "$img" \
	"$(size_of "$img")" "$(du -B1 "$img" | cut -f1)" "$(nproc)" "$runs"
printf '%-28s %8s %8s %6s %10s %6s %10s %6s %12s %12s %6s %8s %8s\n' row keel_s qemu_s ratio \
	qemu_dur_s r_dur keel_uns_s r_uns keel_bytes qemu_bytes size keel_cpu qemu_cpu
# prepared sources for the rows that do not start from raw (not timed)
qemu-img convert -m 8 -W -f raw -O qcow2 "$img" "$dir/src.qcow2"
qemu-img convert -m 8 -f raw -O vmdk -o subformat=streamOptimized "$img" "$dir/src.vmdk"
sync

# timed NAME OUTFILE CMD...: runs CMD once after warm-up; appends "secs cpu" to $dir/NAME.t
timed() {
	local name=$1 out=$2 t0 t1
	shift 2
	rm -f "$out"
	t0=$(now)
	/usr/bin/time -f '%U %S' -o "$dir/cpu" "$@" >/dev/null 2>"$dir/err" || return 1
	t1=$(now)
	echo "$(secs "$t0" "$t1") $(awk '{ print $1 + $2 }' "$dir/cpu")" >>"$dir/$name.t"
}
# timed3 ...: timed, tried up to 3 times (qemu-img's PBKDF2 self-timing for
# LUKS fails now and then: "Unable to get accurate CPU usage")
timed3() {
	local _
	for _ in 1 2 3; do
		timed "$@" && return 0
	done
	return 1
}
# pick the CPU figure of the run whose time is the median
med_time() { cut -d' ' -f1 "$dir/$1.t" | median; }
med_cpu() { awk -v m="$(med_time "$1")" '$1 == m { print $2; exit }' "$dir/$1.t"; }

row() { # row NAME KEEL_FMT "KEEL_ARGS" "QEMU_ARGS" SRC SRCFMT EXT DURABLE(0/1)
	local name=$1 kfmt=$2 kargs=$3 qargs=$4 src=$5 sfmt=$6 ext=$7 dur=$8 kt qt dt rd ut ru ks qs
	local i order which
	case $name in *"${BENCH_ONLY:-}"*) ;; *) return ;; esac
	local qfmt
	if ! have "$kfmt"; then
		printf '%-28s %8s\n' "$name" "n/a (keel has no $kfmt writer yet)"
		return
	fi
	qfmt=$( [ "$sfmt" = vhd ] && echo vpc || echo "$sfmt")
	rm -f "$dir"/k.t "$dir"/q.t "$dir"/d.t "$dir"/u.t
	for i in $(seq "$runs"); do
		# the four runs in one order, then the reverse: a run that
		# follows another tool's freed page cache (see Method) is
		# not always the same tool's
		order="k q d u"
		[ $((i % 2)) = 0 ] && order="u d q k"
		for which in $order; do
			case $which in
			k)
				warm "$src"
				# shellcheck disable=SC2086
				if ! timed k "$dir/k.$ext" "$KEEL" convert -f "$sfmt" $kargs "$src" "$dir/k.$ext"; then
					printf '%-28s keel failed: %s\n' "$name" "$(head -1 "$dir/err")"
					return
				fi
				ks=$(size_of "$dir/k.$ext")
				rm -f "$dir/k.$ext" ;;
			q)
				warm "$src"
				# shellcheck disable=SC2086
				timed3 q "$dir/q.$ext" qemu-img convert -f "$qfmt" $qargs "$src" "$dir/q.$ext" ||
					{ printf '%-28s qemu-img failed: %s\n' "$name" "$(head -1 "$dir/err")"; return; }
				qs=$(size_of "$dir/q.$ext")
				rm -f "$dir/q.$ext" ;;
			d)
				[ "$dur" = 1 ] || continue
				warm "$src"
				# shellcheck disable=SC2086
				timed3 d "$dir/q.$ext" qemu-img convert -t none -f "$qfmt" $qargs "$src" \
					"$dir/q.$ext" || echo "0 0" >>"$dir/d.t"
				rm -f "$dir/q.$ext" ;;
			u)
				[ "$dur" = 1 ] || continue
				warm "$src"
				# shellcheck disable=SC2086
				timed u "$dir/k.$ext" "$KEEL" convert -t unsafe -f "$sfmt" $kargs "$src" \
					"$dir/k.$ext" || echo "0 0" >>"$dir/u.t"
				rm -f "$dir/k.$ext" ;;
			esac
		done
		# slow rows (qemu-img's single-threaded deflate) once only
		[ "$(awk -v t="$(tail -1 "$dir/q.t" | cut -d' ' -f1)" 'BEGIN { print (t > 20) }')" = 1 ] &&
			break
	done
	kt=$(med_time k)
	qt=$(med_time q)
	dt=- rd=- ut=- ru=-
	if [ "$dur" = 1 ]; then
		dt=$(med_time d)
		rd=$(awk -v a="$kt" -v b="$dt" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
		ut=$(med_time u)
		ru=$(awk -v a="$ut" -v b="$qt" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
	fi
	printf '%-28s %8s %8s %6.2f %10s %6s %10s %6s %12s %12s %6.3f %8.2f %8.2f\n' "$name" "$kt" \
		"$qt" "$(awk -v a="$kt" -v b="$qt" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$dt" \
		"$rd" "$ut" "$ru" \
		"$ks" "$qs" "$(awk -v a="$ks" -v b="$qs" 'BEGIN { print (b > 0 ? a / b : 0) }')" \
		"$(med_cpu k)" "$(med_cpu q)"
}

row "raw->qcow2" qcow2 "-O qcow2" "-m 8 -W -O qcow2" "$img" raw qcow2 1
row "raw->qcow2 zstd -c" qcow2 "-O qcow2 -o compression_type=zstd -c" \
	"-m 8 -W -c -O qcow2 -o compression_type=zstd" "$img" raw qcow2 0
row "raw->vmdk streamOptimized" vmdk "-O vmdk -o subformat=streamOptimized" \
	"-m 8 -O vmdk -o subformat=streamOptimized" "$img" raw vmdk 0
row "qcow2->vhdx" vhdx "-O vhdx" "-m 8 -W -O vhdx" "$dir/src.qcow2" qcow2 vhdx 1
row "vmdk->raw" raw "-O raw" "-m 8 -W -O raw" "$dir/src.vmdk" vmdk raw 1
# encrypted outputs (LUKS, aes-256 xts-plain64; 100 ms of PBKDF2, little
# beside the copy: qemu-img's own timing of shorter runs fails now and
# then, "Unable to get accurate CPU usage"): a LUKS volume holds every
# sector, so zeros are encrypted and written by both tools
printf 'bench pass' >"$dir/pw"
row "raw->luks" luks "--key-file $dir/pw -O luks -o iter-time=100" \
	"--object secret,id=s0,file=$dir/pw -m 8 -W -O luks -o key-secret=s0,iter-time=100" \
	"$img" raw luks 1
row "raw->qcow2 luks" qcow2 "--key-file $dir/pw -O qcow2 -o encrypt.format=luks,encrypt.iter-time=100" \
	"--object secret,id=s0,file=$dir/pw -m 8 -W -O qcow2 -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100" \
	"$img" raw qcow2 1
# GCE's image.tar.gz into qcow2: keel reads the tar.gz in one pass; without
# it, a user extracts disk.raw (GNU tar, sparse) and runs qemu-img on it.
# The source is made once with keel -O gce -o level=1 (the level changes
# the inflate speed little). Not one of issue 4's goal rows.
gce_row() {
	local kt qt ks qs
	"$KEEL" convert -O gce -o level=1 -f raw "$img" "$dir/src.tar.gz" >/dev/null ||
		{ echo "gce tar.gz->qcow2: preparing the source failed"; return; }
	rm -f "$dir"/k.t "$dir"/q.t
	for _ in $(seq "$(( runs < 3 ? runs : 3 ))"); do
		warm "$dir/src.tar.gz"
		timed k "$dir/k.qcow2" "$KEEL" convert -O qcow2 "$dir/src.tar.gz" "$dir/k.qcow2" ||
			{ echo "gce tar.gz->qcow2: keel failed: $(head -1 "$dir/err")"; return; }
		ks=$(size_of "$dir/k.qcow2")
		rm -f "$dir/k.qcow2"
		warm "$dir/src.tar.gz"
		mkdir -p "$dir/x"
		timed q "$dir/q.qcow2" sh -c "tar -C '$dir/x' -xzf '$dir/src.tar.gz' &&
			qemu-img convert -m 8 -W -f raw -O qcow2 '$dir/x/disk.raw' '$dir/q.qcow2'" ||
			{ echo "gce tar.gz->qcow2: tar + qemu-img failed: $(head -1 "$dir/err")"; return; }
		qs=$(size_of "$dir/q.qcow2")
		rm -rf "$dir/q.qcow2" "$dir/x"
	done
	kt=$(med_time k)
	qt=$(med_time q)
	printf '%-28s %8s %8s %6.2f %10s %6s %10s %6s %12s %12s %6.3f %8.2f %8.2f\n' \
		"$gce_name" "$kt" "$qt" \
		"$(awk -v a="$kt" -v b="$qt" 'BEGIN { print (b > 0 ? a / b : 0) }')" - - - - \
		"$ks" "$qs" "$(awk -v a="$ks" -v b="$qs" 'BEGIN { print (b > 0 ? a / b : 0) }')" \
		"$(med_cpu k)" "$(med_cpu q)"
	rm -f "$dir/src.tar.gz"
}
gce_name="gce tar.gz->qcow2 (tar+qemu)"
case $gce_name in *"${BENCH_ONLY:-}"*) [ "${BENCH_GCE:-1}" = 1 ] && gce_row ;; esac
echo "# goals: ratio <= 1.0 uncompressed rows, <= 0.4 compressed rows; size <= 1.03"
echo "# ratio: keel default (durable) / qemu-img default (unflushed)"
echo "# r_dur: keel default / qemu-img -t none (both durable)"
echo "# r_uns: keel -t unsafe / qemu-img default (both unflushed)"
echo "# load average during the run: $(cut -d' ' -f1-3 /proc/loadavg)"
