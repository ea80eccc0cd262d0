#!/usr/bin/env bash
# VDI interop: qemu-img against keel, both directions. No other VDI reader
# is installed (VirtualBox is not; `vdir` is coreutils), so qemu-img check
# and compare are the independent judges; differencing images, which qemu
# refuses, are checked against keel's own expected bytes.
. "$(dirname "$0")/../shell/lib.sh"
command -v qemu-img >/dev/null || skip "qemu-img not installed"

pattern_file "$TMP/small.raw" $((24 * 1024 * 1024 + 12345))
truncate -s $((5 * 1024 * 1024 * 1024 + 777)) "$TMP/big.raw"
dd if="$TMP/small.raw" of="$TMP/big.raw" bs=1M count=8 conv=notrunc status=none
dd if="$TMP/small.raw" of="$TMP/big.raw" bs=1M seek=$((4 * 1024 + 3)) count=12 conv=notrunc status=none
printf 'tail bytes past the last whole sector' | dd of="$TMP/big.raw" bs=1 \
	seek=$((5 * 1024 * 1024 * 1024 + 777 - 37)) conv=notrunc status=none

vsize() { qemu-img info -f "$1" --output json "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
kinfo() { keel info --output json "$1" | python3 -c "import json,sys; d=json.load(sys.stdin); print(d$2)"; }

# ---------------------------------------------------------------- READ matrix
for src in small big; do
	for st in off on; do
		n="$src-static$st"
		qemu-img convert -f raw -O vdi -o static=$st "$TMP/$src.raw" "$TMP/$n.vdi"
		qemu-img convert -f vdi -O raw "$TMP/$n.vdi" "$TMP/$n.qemu.raw"
		want=$([ $st = on ] && echo fixed || echo dynamic)
		t "read $n: probed as vdi ($want)" \
			sh -c "'$KEEL' info '$TMP/$n.vdi' | grep -q 'file format: vdi ($want)'"
		t "read $n: virtual size equals qemu's" \
			test "$(kinfo "$TMP/$n.vdi" '["virtual_size"]')" = "$(vsize vdi "$TMP/$n.vdi")"
		t "read $n: keel convert -O raw" keel convert -O raw "$TMP/$n.vdi" "$TMP/$n.keel.raw"
		t "read $n: byte-identical to qemu-img convert -f vdi" \
			qemu-img compare -f raw -F raw "$TMP/$n.qemu.raw" "$TMP/$n.keel.raw"
		t "read $n: same length as qemu's output" \
			test "$(stat -c %s "$TMP/$n.qemu.raw")" -eq "$(stat -c %s "$TMP/$n.keel.raw")"
		t "read $n: info shows the image UUID as a version-4 UUID" \
			sh -c "'$KEEL' info '$TMP/$n.vdi' | grep -Eq '^uuid: [0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-'"
		rm -f "$TMP/$n.qemu.raw" "$TMP/$n.keel.raw" "$TMP/$n.vdi"
	done
done

# ---------------------------------------------------------------- WRITE matrix
for src in small big; do
	for o in subformat=dynamic subformat=fixed static=on; do
		n="$src-$(echo "$o" | tr ',=' '__')"
		t "write $n: keel convert -O vdi -o $o" keel convert -O vdi -o "$o" "$TMP/$src.raw" "$TMP/$n.vdi"
		t "write $n: qemu-img check passes" qemu-img check -f vdi "$TMP/$n.vdi"
		t "write $n: qemu-img compare -F vdi says identical" \
			qemu-img compare -f raw -F vdi "$TMP/$src.raw" "$TMP/$n.vdi"
		rm -f "$TMP/$n.vdi"
	done
done
# keel writes into a qemu-made image and qemu still likes it
qemu-img create -f vdi "$TMP/q.vdi" 24M >/dev/null
t "keel writes into a qemu-made VDI" keel io -c 'write -P 0x5a 3000000 100000' \
	-c 'write -P 0x5b 20000000 5000' "$TMP/q.vdi"
t "qemu-img check passes after keel's writes" qemu-img check -f vdi "$TMP/q.vdi"
t "qemu-img reads keel's writes" sh -c "qemu-img convert -f vdi -O raw '$TMP/q.vdi' '$TMP/q.raw' &&
	python3 -c \"d=open('$TMP/q.raw','rb').read(); assert d[3000000:3100000]==b'\\x5a'*100000 and d[20000000:20005000]==b'\\x5b'*5000 and d[:3000000].count(0)==3000000\""

# ---------------------------------------------------------------- chains
keel convert -O vdi "$TMP/small.raw" "$TMP/base.vdi" >/dev/null
t "chain: keel create -f vdi -b base.vdi child.vdi" keel create -f vdi -b base.vdi "$TMP/child.vdi"
t "chain: writes into the child" keel io -c 'write -P 0xab 1000448 70000' \
	-c 'write -P 0x11 4194304 2M' -c 'write -P 0x22 20971520 4096' "$TMP/child.vdi"
cp "$TMP/small.raw" "$TMP/expect.raw"
truncate -s "$(kinfo "$TMP/base.vdi" '["virtual_size"]')" "$TMP/expect.raw"
python3 - "$TMP/expect.raw" <<'PY'
import sys
f = open(sys.argv[1], 'r+b')
for off, byte, n in ((1000448, 0xab, 70000), (4194304, 0x11, 2 << 20), (20971520, 0x22, 4096)):
    f.seek(off); f.write(bytes([byte]) * n)
PY
t "chain: keel reads child over parent" keel compare "$TMP/expect.raw" "$TMP/child.vdi"
t "chain: info links the parent by UUID" test "$(kinfo "$TMP/child.vdi" '["details"]["parent uuid"]')" = \
	"$(kinfo "$TMP/base.vdi" '["uuid"]')"
t "chain: qemu-img refuses differencing VDIs (it has no VDI backing support)" sh -c \
	"qemu-img check -f vdi '$TMP/child.vdi' 2>&1 | grep -q 'non-NULL link UUID'"
mkdir -p "$TMP/vm/Snapshots"
cp "$TMP/base.vdi" "$TMP/vm/disk.vdi"
cp "$TMP/child.vdi" "$TMP/vm/Snapshots/{snap}.vdi"
expect_err "chain: a parent in the directory above is not followed by default" \
	"parent not found.*--allow-external-backing" \
	keel compare "$TMP/expect.raw" "$TMP/vm/Snapshots/{snap}.vdi"
t "chain: VirtualBox layout (Snapshots/ under the VM folder) with --allow-external-backing" \
	keel compare --allow-external-backing "$TMP/expect.raw" "$TMP/vm/Snapshots/{snap}.vdi"
rm "$TMP/base.vdi"
expect_err "chain: a missing parent is named by its UUID" \
	"child.vdi: parent not found: no \\*.vdi file in .* has image UUID" \
	keel convert -O raw "$TMP/child.vdi" "$TMP/x.raw"
t "chain: info still shows the child, with a warning" sh -c \
	"'$KEEL' info '$TMP/child.vdi' 2>&1 | grep -q 'keel: warning:.*parent not found'"
finish
