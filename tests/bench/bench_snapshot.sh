#!/usr/bin/env bash
# qcow2 internal snapshots: keel snapshot -c/-a/-d against qemu-img snapshot
# on the same image, a 2 GiB qcow2 with real filesystem content (night0 of
# make-nightlies.sh, converted by qemu-img; about 24000 data clusters whose
# references each operation counts). Each tool works on its own copy, and
# each round creates two snapshots, reverts to the first, deletes both;
# rows are the medians of 5 rounds (one operation takes tens of ms, so
# process start-up is part of what is measured). Both sync: qemu-img
# flushes at close, keel syncs around the header write that switches states.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nightlies.sh"
need qemu-img
ensure_nightlies || exit 0
d=$BENCH_DIR/snapshot
rm -rf "$d"; mkdir -p "$d"
qemu-img convert -f raw -O qcow2 "$NIGHTS_DIR/night0.raw" "$d/base.qcow2"
cp "$d/base.qcow2" "$d/k.qcow2"
cp "$d/base.qcow2" "$d/q.qcow2"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
steps=("create:-c a" "create, second:-c b" "revert:-a a" "delete:-d b" "delete, last:-d a")
for _ in 1 2 3 4 5; do
	for i in "${!steps[@]}"; do
		args=${steps[$i]#*:}
		# shellcheck disable=SC2086
		timeit k "$KEEL" -q snapshot $args "$d/k.qcow2" || exit 1
		# shellcheck disable=SC2086
		timeit q qemu-img snapshot $args "$d/q.qcow2" || exit 1
		echo "$k" >>"$d/k.$i"
		echo "$q" >>"$d/q.$i"
	done
done
row "qcow2 internal snapshot (2 GiB image)" "keel (s)" "qemu-img" "k/q"
for i in "${!steps[@]}"; do
	k=$(median <"$d/k.$i")
	q=$(median <"$d/q.$i")
	row "${steps[$i]%%:*}" "$k" "$q" "$(ratio "$k" "$q")"
done
qemu-img check -q "$d/k.qcow2" || echo "MISMATCH: qemu-img check fails on keel's image"
qemu-img compare -q "$d/k.qcow2" "$NIGHTS_DIR/night0.raw" || echo "MISMATCH: not night0"
rm -rf "$d"
