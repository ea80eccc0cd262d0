#!/usr/bin/env bash
# keel io on .keel versus qemu-io on qcow2 (same cluster size), raw as the
# ceiling: 1 GiB sequential write and read, 20,000 random 4 KiB writes and reads.
. "$(dirname "$0")/lib.sh"
need qemu-io
need bc
d=$BENCH_DIR/io
rm -rf "$d"; mkdir -p "$d"
SIZE=2G
N=${BENCH_IO_RANDOM:-20000}
python3 - "$N" > "$d/rw.cmds" <<'PY'
import random, sys
n = int(sys.argv[1]); r = random.Random(7)
offs = [r.randrange(0, (1 << 30) // 4096) * 4096 for _ in range(n)]
out = sys.stdout
for o in offs: out.write(f"write -P 0x5a {o} 4k\n")
for o in offs: out.write(f"read -P 0x5a {o} 4k\n")
PY
head -n "$N" "$d/rw.cmds" > "$d/w.cmds"
tail -n "$N" "$d/rw.cmds" > "$d/r.cmds"
args() { local a=(); while read -r l; do a+=(-c "$l"); done < "$1"; printf '%s\0' "${a[@]}"; }
mapfile -d '' WARGS < <(args "$d/w.cmds")
mapfile -d '' RARGS < <(args "$d/r.cmds")

"$KEEL" -q create -o cluster_size=64K "$d/k.keel" $SIZE
qemu-img create -q -f qcow2 -o cluster_size=64K "$d/q.qcow2" $SIZE
truncate -s $SIZE "$d/r.raw"

row "operation" "keel" "qemu-io" "ratio"
row "" "(.keel)" "(qcow2)" "k/q"
timeit kw "$KEEL" -q io -c 'write -P 0xab 0 1G' "$d/k.keel"
timeit qw qemu-io -f qcow2 -t writeback -c 'write -P 0xab 0 1G' "$d/q.qcow2"
timeit rw qemu-io -f raw -t writeback -c 'write -P 0xab 0 1G' "$d/r.raw"
row "sequential write 1 GiB (s)" "$kw" "$qw" "$(ratio $kw $qw)"
timeit kr "$KEEL" -q io -c 'read -P 0xab 0 1G' "$d/k.keel"
timeit qr qemu-io -f qcow2 -c 'read -P 0xab 0 1G' "$d/q.qcow2"
timeit rr qemu-io -f raw -c 'read -P 0xab 0 1G' "$d/r.raw"
row "sequential read 1 GiB (s)" "$kr" "$qr" "$(ratio $kr $qr)"
timeit krw "$KEEL" -q io "${WARGS[@]}" "$d/k.keel"
timeit qrw qemu-io -f qcow2 -t writeback "${WARGS[@]}" "$d/q.qcow2"
timeit rrw qemu-io -f raw -t writeback "${WARGS[@]}" "$d/r.raw"
row "$N random 4 KiB writes (s)" "$krw" "$qrw" "$(ratio $krw $qrw)"
timeit krr "$KEEL" -q io "${RARGS[@]}" "$d/k.keel"
timeit qrr qemu-io -f qcow2 "${RARGS[@]}" "$d/q.qcow2"
timeit rrr qemu-io -f raw "${RARGS[@]}" "$d/r.raw"
row "$N random 4 KiB reads (s)" "$krr" "$qrr" "$(ratio $krr $qrr)"
"$KEEL" -q create -o cluster_size=64K,compression=none "$d/n.keel" $SIZE
timeit nw "$KEEL" -q io -c 'write -P 0xab 0 1G' "$d/n.keel"
timeit nr "$KEEL" -q io -c 'read -P 0xab 0 1G' "$d/n.keel"
row "seq write 1 GiB, keel compression=none (s)" "$nw" "$qw" "$(ratio $nw $qw)"
row "seq read 1 GiB, keel compression=none (s)" "$nr" "$qr" "$(ratio $nr $qr)"
echo
row "raw ceiling (qemu-io -f raw)" "seq write" "seq read" ""
row "" "$rw" "$rr" ""
echo "keel sequential vs raw (1.0 = raw speed): write $(ratio $rw $kw), read $(ratio $rr $kr);" \
	"uncompressed: write $(ratio $rw $nw), read $(ratio $rr $nr)"
echo "random vs raw: write $(ratio $rrw $krw), read $(ratio $rrr $krr)"
ls -la "$d"/k.keel "$d"/q.qcow2 | awk '{print $5, $9}'
rm -rf "$d"
