#!/usr/bin/env bash
# VHD interop: qemu-img (driver "vpc") and libvhdi (vhdiinfo, vhdimount)
# against keel, both directions, plus the images made by Windows and qemu
# in tests/interop/data (from dfvfs's test data) and parent chains.
. "$(dirname "$0")/../shell/lib.sh"
command -v qemu-img >/dev/null || skip "qemu-img not installed"
DATA=$(cd "$(dirname "$0")" && pwd)/data

# Sources: a small image (data, zero runs, holes, odd tail) and a sparse one
# of 5 GiB + an odd tail with data beyond 4 GiB.
pattern_file "$TMP/small.raw" $((24 * 1024 * 1024 + 12345))
truncate -s $((5 * 1024 * 1024 * 1024 + 777)) "$TMP/big.raw"
dd if="$TMP/small.raw" of="$TMP/big.raw" bs=1M count=8 conv=notrunc status=none
dd if="$TMP/small.raw" of="$TMP/big.raw" bs=1M seek=$((4 * 1024 + 3)) count=12 conv=notrunc status=none
printf 'tail bytes past the last whole sector' | dd of="$TMP/big.raw" bs=1 \
	seek=$((5 * 1024 * 1024 * 1024 + 777 - 37)) conv=notrunc status=none

vsize() { qemu-img info -f "$1" --output json "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
keel_vsize() { keel info --output json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual_size"])'; }

# ---------------------------------------------------------------- READ matrix
# qemu-img makes the image; keel must read exactly what qemu-img reads.
for src in small big; do
	for sub in dynamic fixed; do
		for fs in off on; do
			n="$src-$sub-fs$fs"
			qemu-img convert -f raw -O vpc -o subformat=$sub,force_size=$fs \
				"$TMP/$src.raw" "$TMP/$n.vhd"
			qemu-img convert -f vpc -O raw "$TMP/$n.vhd" "$TMP/$n.qemu.raw"
			t "read $n: probed as vhd (qemu probes fixed VHD as raw)" \
				sh -c "'$KEEL' info '$TMP/$n.vhd' | grep -q 'file format: vhd ($sub)'"
			t "read $n: virtual size equals qemu's" \
				test "$(keel_vsize "$TMP/$n.vhd")" = "$(vsize vpc "$TMP/$n.vhd")"
			t "read $n: keel convert -O raw" keel convert -O raw "$TMP/$n.vhd" "$TMP/$n.keel.raw"
			t "read $n: byte-identical to qemu-img convert -f vpc" \
				qemu-img compare -f raw -F raw "$TMP/$n.qemu.raw" "$TMP/$n.keel.raw"
			t "read $n: same length as qemu's output" \
				test "$(stat -c %s "$TMP/$n.qemu.raw")" -eq "$(stat -c %s "$TMP/$n.keel.raw")"
			t "read $n: keel compare against the source" keel compare "$TMP/$src.raw" "$TMP/$n.vhd"
			rm -f "$TMP/$n.qemu.raw" "$TMP/$n.keel.raw" "$TMP/$n.vhd"
		done
	done
done

# ---------------------------------------------------------------- samples
gzip -dc "$DATA/ext2.vhd.gz" >"$TMP/ext2.vhd"
qemu-img convert -f vpc -O raw "$TMP/ext2.vhd" "$TMP/ext2.qemu.raw"
t "ext2.vhd (qemu-made): read" keel convert -O raw "$TMP/ext2.vhd" "$TMP/ext2.keel.raw"
t "ext2.vhd: identical to qemu-img" cmp "$TMP/ext2.qemu.raw" "$TMP/ext2.keel.raw"
t "ext2.vhd: first 4 MiB are ext2.qcow2's content (sha256 a6c2f0e39afe6c6a...)" \
	sh -c "head -c 4194304 '$TMP/ext2.keel.raw' | sha256sum | grep -q '^a6c2f0e39afe6c6a'"
t "ext2.vhd: the rest is zero" sh -c "[ \$(tail -c +4194305 '$TMP/ext2.keel.raw' | tr -d '\\0' | wc -c) -eq 0 ]"

mkdir -p "$TMP/win"
gzip -dc "$DATA/fat-differential.vhd.gz" >"$TMP/win/fat-differential.vhd"
keel info "$TMP/win/fat-differential.vhd" >"$TMP/fat.info" 2>"$TMP/fat.err"
t "fat-differential.vhd (Windows): info works without the parent" test $? -eq 0
t "fat-differential.vhd: info warns that the parent is missing" grep -q "keel: warning:.*parent not found" "$TMP/fat.err"
t "fat-differential.vhd: info shows the parent name" \
	grep -q 'parent name: C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd' "$TMP/fat.info"
t "fat-differential.vhd: info shows the parent UUID" \
	grep -q 'parent uuid: 5fa21a55-f394-aa4d-9958-1951a67d5540' "$TMP/fat.info"
t "fat-differential.vhd: info shows the relative locator as the parent" \
	grep -q '^parent: fat-parent.vhd' "$TMP/fat.info"
keel convert -O raw "$TMP/win/fat-differential.vhd" "$TMP/fat.raw" 2>"$TMP/fat.read.err"
t "fat-differential.vhd: reading fails (exit 1)" test $? -eq 1
t "fat-differential.vhd: 'parent not found' naming the relative locator resolved here" \
	grep -q "^keel: error: .*fat-differential.vhd: parent not found: W2ru '.\\\\fat-parent.vhd': $TMP/win/fat-parent.vhd not found" "$TMP/fat.read.err"
t "fat-differential.vhd: the absolute Windows locator is named as unresolvable" \
	grep -q "W2ku 'C:.*fat-parent.vhd': an absolute Windows path with a drive letter" "$TMP/fat.read.err"
t "fat-differential.vhd: no output left behind" test ! -e "$TMP/fat.raw"

for s in image image-differential; do
	gzip -dc "$DATA/$s.vhd.gz" >"$TMP/$s.vhd"
	expect_err "$s.vhd (bad footer checksums): refused, naming the checksum and both offsets" \
		"$s.vhd: VHD footer checksum mismatch at offset 2099712 (end of file): stored 0x[0-9a-f]*, computed 0x[0-9a-f]*; the footer copy at offset 0 is bad too" \
		keel convert -O raw "$TMP/$s.vhd" "$TMP/$s.raw"
	t "$s.vhd: qemu-img refuses it too" sh -c "! qemu-img info -f vpc '$TMP/$s.vhd' 2>/dev/null"
done

# fat-differential.vhd over a stand-in parent carrying the expected unique id:
# keel must take exactly the sectors whose bitmap bit (MSB first) is set
# from the Windows-made child, everything else from the parent.
keel create -f vhd -o force_size=on "$TMP/win/fat-parent.vhd" 4M >/dev/null
keel io -c 'write -P 0x77 0 4M' "$TMP/win/fat-parent.vhd" >/dev/null
python3 - "$TMP/win/fat-parent.vhd" <<'PY'
import struct, sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
for off in (0, len(b) - 512):
    b[off + 68:off + 84] = bytes.fromhex('5fa21a55f394aa4d99581951a67d5540')
    b[off + 64:off + 68] = bytes(4)
    b[off + 64:off + 68] = struct.pack('>I', ~sum(b[off:off + 512]) & 0xffffffff)
open(p, 'wb').write(b)
PY
t "fat-differential.vhd over a parent with the right UUID: read" \
	keel convert -O raw "$TMP/win/fat-differential.vhd" "$TMP/fat.raw"
t "fat-differential.vhd: sectors with bitmap bits come from the child, others from the parent" \
	python3 - "$TMP/win/fat-differential.vhd" "$TMP/fat.raw" <<'PY'
import struct, sys
child = open(sys.argv[1], 'rb').read()
got = open(sys.argv[2], 'rb').read()
hdr = child[512:1536]
bat_off = struct.unpack('>Q', hdr[16:24])[0]
n = struct.unpack('>I', hdr[28:32])[0]
bs = struct.unpack('>I', hdr[32:36])[0]
bm_size = ((bs // 512 + 7) // 8 + 511) // 512 * 512
set_count = 0
for blk in range(n):
    e = struct.unpack('>I', child[bat_off + 4 * blk:bat_off + 4 * blk + 4])[0]
    for s in range(bs // 512):
        v = blk * bs + s * 512
        if e != 0xffffffff and child[e * 512 + s // 8] & (0x80 >> (s % 8)):
            set_count += 1
            want = child[e * 512 + bm_size + s * 512:e * 512 + bm_size + s * 512 + 512]
        else:
            want = b'\x77' * 512
        assert got[v:v + 512] == want, (blk, s)
assert set_count > 0
print(set_count, "sectors from the child")
PY

# ---------------------------------------------------------------- WRITE matrix
have_vhdi=1
command -v vhdiinfo >/dev/null || { have_vhdi=0; echo "# vhdiinfo (libvhdi-utils) not installed: libvhdi checks skipped"; }
have_mount=0
# fusermount too: without it a mount made here would stay behind
if command -v vhdimount >/dev/null && command -v fusermount >/dev/null && [ -e /dev/fuse ]; then
	mkdir -p "$TMP/mnt"
	keel convert -O vhd "$TMP/small.raw" "$TMP/probe.vhd" >/dev/null
	if timeout 20 vhdimount "$TMP/probe.vhd" "$TMP/mnt" >/dev/null 2>&1 && [ -e "$TMP/mnt/vhdi1" ]; then
		have_mount=1
		fusermount -u "$TMP/mnt"
	else
		echo "# vhdimount cannot mount here (FUSE unavailable): libvhdi byte checks skipped"
	fi
fi
mount_cmp() { # IMAGE RAW: libvhdi's view of IMAGE equals RAW (padded with zeros)
	timeout 20 vhdimount "$1" "$TMP/mnt" >/dev/null 2>&1 || return 1
	local rc=0 sz
	sz=$(stat -c %s "$2")
	cmp -n "$sz" "$TMP/mnt/vhdi1" "$2" || rc=1
	[ "$(tail -c +$((sz + 1)) "$TMP/mnt/vhdi1" | tr -d '\0' | wc -c)" -eq 0 ] || rc=1
	fusermount -u "$TMP/mnt"
	return $rc
}

for src in small big; do
	for o in subformat=dynamic subformat=fixed subformat=dynamic,force_size=on \
		subformat=dynamic,block_size=512K subformat=dynamic,block_size=16M azure; do
		[ "$src" = big ] && [ "$o" = subformat=fixed ] && continue # same path as azure, 5 GiB
		n="$src-$(echo "$o" | tr ',=' '__')"
		t "write $n: keel convert -O vhd -o $o" keel convert -O vhd -o "$o" "$TMP/$src.raw" "$TMP/$n.vhd"
		t "write $n: qemu-img compare -F vpc says identical" \
			qemu-img compare -f raw -F vpc "$TMP/$src.raw" "$TMP/$n.vhd"
		[ $have_vhdi = 1 ] && t "write $n: vhdiinfo opens it" sh -c "vhdiinfo '$TMP/$n.vhd' | grep -q 'Media size'"
		if [ $have_mount = 1 ] && [ "$src" = small ]; then
			t "write $n: vhdimount reads the same bytes" mount_cmp "$TMP/$n.vhd" "$TMP/$src.raw"
		fi
		rm -f "$TMP/$n.vhd"
	done
done

# Azure: fixed, whole MiB, footer after exactly the virtual size
keel convert -O vhd -o azure "$TMP/small.raw" "$TMP/az.vhd" >/dev/null
az=$(vsize vpc "$TMP/az.vhd")
t "azure: virtual size is a whole number of MiB ($az)" test $((az % 1048576)) -eq 0
t "azure: size rounded up, not down" test "$az" -ge "$(stat -c %s "$TMP/small.raw")"
t "azure: fixed disk" sh -c "'$KEEL' info '$TMP/az.vhd' | grep -q 'file format: vhd (fixed)'"
[ $have_vhdi = 1 ] && t "azure: fixed disk (vhdiinfo)" sh -c "vhdiinfo '$TMP/az.vhd' | grep -q 'Disk type.*Fixed'"
t "azure: file is virtual size + 512-byte footer" test "$(stat -c %s "$TMP/az.vhd")" -eq $((az + 512))
t "azure: qemu-img sees the same size (no CHS rounding)" \
	test "$(vsize vpc "$TMP/az.vhd")" -eq "$(keel_vsize "$TMP/az.vhd")"

# ---------------------------------------------------------------- chains
keel convert -O vhd "$TMP/small.raw" "$TMP/base.vhd" >/dev/null
t "chain: keel create -f vhd -b base.vhd child.vhd" keel create -f vhd -b base.vhd "$TMP/child.vhd"
t "chain: writes into the child" keel io -c 'write -P 0xab 1000448 70000' \
	-c 'write -P 0x11 4194304 2M' -c 'write -P 0x22 20971520 4096' "$TMP/child.vhd"
cp "$TMP/small.raw" "$TMP/expect.raw"
truncate -s "$(keel_vsize "$TMP/base.vhd")" "$TMP/expect.raw"
python3 - "$TMP/expect.raw" <<'PY'
import sys
f = open(sys.argv[1], 'r+b')
for off, byte, n in ((1000448, 0xab, 70000), (4194304, 0x11, 2 << 20), (20971520, 0x22, 4096)):
    f.seek(off); f.write(bytes([byte]) * n)
PY
t "chain: keel reads child over parent" keel compare "$TMP/expect.raw" "$TMP/child.vhd"
base_uuid=$(keel info --output json "$TMP/base.vhd" | python3 -c 'import json,sys; print(json.load(sys.stdin)["uuid"])')
if [ $have_vhdi = 1 ]; then
	vhdiinfo "$TMP/child.vhd" >"$TMP/child.vhdiinfo" 2>&1
	t "chain: vhdiinfo sees a differencing disk" grep -q 'Disk type.*Differential' "$TMP/child.vhdiinfo"
	t "chain: vhdiinfo sees the parent's unique id" grep -q "Parent identifier.*$base_uuid" "$TMP/child.vhdiinfo"
	t "chain: vhdiinfo sees the parent file name" grep -q 'Parent filename.*base.vhd' "$TMP/child.vhdiinfo"
fi
if [ $have_mount = 1 ]; then
	# libvhdi 20210425 (Debian 12) finds and opens the parent, but returns the
	# parent's data for every sector of a differencing image, Windows-made
	# ones included (fat-differential.vhd above); so only the open is checked.
	t "chain: vhdimount opens the chain (finds the parent by name)" \
		sh -c "timeout 20 vhdimount '$TMP/child.vhd' '$TMP/mnt' >/dev/null 2>&1 && [ \$(stat -c %s '$TMP/mnt/vhdi1') -eq $(keel_vsize "$TMP/child.vhd") ]; rc=\$?; fusermount -u '$TMP/mnt' 2>/dev/null; exit \$rc"
fi
t "chain: keel map shows both layers" sh -c "'$KEEL' map '$TMP/child.vhd' | grep -q 'base.vhd'"
t "chain: convert flattens the chain" keel convert -O vhd "$TMP/child.vhd" "$TMP/flat.vhd"
t "chain: flattened image equals the chain" keel compare "$TMP/child.vhd" "$TMP/flat.vhd"
mv "$TMP/base.vhd" "$TMP/base.orig.vhd"
keel create -f vhd "$TMP/base.vhd" 24M >/dev/null
expect_err "chain: a wrong parent (other unique id) is refused" \
	"child.vhd: wrong parent: this differencing VHD expects parent unique id $base_uuid" \
	keel convert -O raw "$TMP/child.vhd" "$TMP/x.raw"
rm "$TMP/base.vhd"
expect_err "chain: a missing parent is named" "parent not found: W2ru '.\\\\base.vhd'" \
	keel compare "$TMP/expect.raw" "$TMP/child.vhd"
mv "$TMP/base.orig.vhd" "$TMP/base.vhd"
t "chain: the right parent back: reads again" keel compare "$TMP/expect.raw" "$TMP/child.vhd"
finish
