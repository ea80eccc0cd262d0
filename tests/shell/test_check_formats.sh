#!/usr/bin/env bash
# tests/shell/test_check_formats.sh - keel check on VHD, VHDX and VDI: clean
# images (keel's own, qemu-img's, a Windows sample) pass with the right
# allocation counts; the damage opening tolerates (a lost VHD end footer, a
# footer copy that disagrees, a wrong VDI allocated count) and leaked blocks
# are reported with exit 3; -r is refused; raw still has nothing to check.
. "$(dirname "$0")/lib.sh"

cd "$TMP"
SAMPLES=${KEEL_INTEROP_SAMPLES:-$ROOT/../shared/interop-samples}

# out FILE: what keel check printed, for grep
out() { keel check "$1" 2>&1; }
# field FILE KEY: a number or boolean from keel check --output json
field() { keel check --output json "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }

for f in vhd vhdx vdi; do
	keel create -f "$f" "k.$f" 8M >/dev/null
	keel io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 5M 1M' "k.$f" >/dev/null
	t "$f: keel's image checks clean" keel check "k.$f"
	t "$f: json says clean, no leaks" test "$(field "k.$f" clean)/$(field "k.$f" leaks)" = True/0
	# blocks of 2M (vhd), 8M (vhdx at this size), 1M (vdi): 0-1M and 5-6M
	want=$(case $f in vhd) echo 2 ;; vhdx) echo 1 ;; vdi) echo 2 ;; esac)
	t "$f: the allocated count is the blocks written ($want)" \
		test "$(field "k.$f" allocated_clusters)" = "$want"
done
if command -v qemu-img >/dev/null; then
	for f in vpc vhdx vdi; do
		e=${f/vpc/vhd}
		qemu-img create -q -f "$f" "q.$e" 8M
		qemu-io -f "$f" -c 'write -P 1 0 1M' -c 'write -P 2 3M 1M' "q.$e" >/dev/null
		t "$e: qemu-img's image checks clean" keel check "q.$e"
	done
	t "vhd: qemu-img's image: 2 of its blocks allocated" test "$(field q.vhd allocated_clusters)" = 2
	t "vdi: qemu-img's image: 2 of 8 blocks allocated" \
		test "$(field q.vdi allocated_clusters)/$(field q.vdi total_clusters)" = 2/8
else
	echo "SKIP: qemu-img missing: qemu-made images not checked"
fi
if [ -f "$SAMPLES/fat-differential.vhd" ]; then
	# Windows pads 3584 bytes before the footer: alignment, not a leak
	t "vhd: a Windows differencing disk checks clean" keel check "$SAMPLES/fat-differential.vhd"
else
	echo "SKIP: interop sample fat-differential.vhd not found"
fi

python3 - <<'PY'
import struct
d = bytearray(open('k.vhd', 'rb').read())
foot = bytes(d[-512:])
span = 512 + (2 << 20)
# an allocation cut off after the block and the new footer, before the BAT
open('leak.vhd', 'wb').write(bytes(d[:-512]) + bytes(span) + foot)
e = bytearray(d); e[-512 + 100] ^= 0xff           # end footer damaged
open('endbad.vhd', 'wb').write(e)
c = bytearray(d); c[24] ^= 1                        # copy at 0: other timestamp
s = sum(b for i, b in enumerate(c[:512]) if not 64 <= i < 68)
struct.pack_into('>I', c, 64, ~s & 0xffffffff)
open('copydiff.vhd', 'wb').write(c)
v = bytearray(open('k.vdi', 'rb').read())
struct.pack_into('<I', v, 0x184, 5)                 # blocks_allocated ahead: leaks
open('count.vdi', 'wb').write(v)
struct.pack_into('<I', v, 0x184, 1)                 # below block 1 in use: qemu would reuse it
open('low.vdi', 'wb').write(v)
open('leak.vdi', 'wb').write(bytes(open('k.vdi', 'rb').read()) + bytes(2 << 20))
PY
expect_rc 3 "vhd: a leaked block before the footer exits 3" keel check leak.vhd
t "vhd: the leak is named with its offset" grep -q "bytes at offset [0-9]*, before the footer, belong to no block" <(out leak.vhd)
t "vhd: json counts 1 leak" test "$(field leak.vhd leaks)" = 1
expect_rc 3 "vhd: a damaged end footer (copy used) exits 3" keel check endbad.vhd
t "vhd: it says the copy at offset 0 was used" grep -q "the footer at the end (offset [0-9]*) is damaged.*using the copy at offset 0" <(out endbad.vhd)
t "vhd: ...and the image still reads" keel compare k.vhd endbad.vhd
expect_rc 3 "vhd: a footer copy that disagrees exits 3" keel check copydiff.vhd
t "vhd: it names both footers" grep -q "footer copy at offset 0 differs from the footer at offset" <(out copydiff.vhd)
expect_rc 3 "vdi: a count ahead of the blocks exits 3" keel check count.vdi
t "vdi: it names the header field" grep -q "header (offset 0x184) counts 5 blocks, the file holds 2 (counted but unused: leaked)" <(out count.vdi)
t "vdi: ...as 3 leaks" test "$(field count.vdi leaks)/$(field count.vdi corruptions)" = 3/0
expect_rc 3 "vdi: a count below a block in use exits 3" keel check low.vdi
t "vdi: ...as a corruption that says why" grep -q "says 1 blocks are allocated, but data block 1 is in use: VirtualBox and qemu would put their next block over it" <(out low.vdi)
expect_rc 3 "vdi: -r leaks does not touch that count" keel check -r leaks low.vdi
t "vdi: -r all raises it" keel check -r all low.vdi
t "vdi: ...and the image is clean" keel check low.vdi
t "vdi: ...with the same content" keel compare k.vdi low.vdi
if command -v qemu-img >/dev/null; then
	t "vdi: ...which qemu-img check accepts" qemu-img check -f vdi low.vdi
fi
t "vdi: -r leaks fixes a count ahead" keel check -r leaks count.vdi
t "vdi: ...clean afterwards" keel check count.vdi
expect_rc 3 "vdi: 2 unreferenced blocks at the end exit 3" keel check leak.vdi
t "vdi: json counts 2 leaks" test "$(field leak.vdi leaks)" = 2
t "vdi: the leaked blocks are named" grep -q "data blocks 2-3 from offset [0-9]* are not in the block map" \
	<(out leak.vdi)
t "vdi: -r leaks gives them back" keel check -r leaks leak.vdi
t "vdi: ...the file is its old size" test "$(stat -c %s leak.vdi)" = "$(stat -c %s k.vdi)"
t "vdi: ...and clean" keel check leak.vdi
# VHD repairs: the leaked tail, and a lost end footer rebuilt from the copy
expect_rc 1 "vhd: a damaged end footer refuses writes" keel io -c 'write 0 512' endbad.vhd
keel check -r all endbad.vhd >repair.out 2>&1
t "vhd: -r all rebuilds the end footer" grep -q "repaired: end footer rebuilt from the copy at offset 0" repair.out
t "vhd: ...and says the image is clean now" grep -q "1 problems were found and repaired" repair.out
t "vhd: ...clean afterwards" keel check endbad.vhd
t "vhd: ...same content" keel compare k.vhd endbad.vhd
if command -v qemu-img >/dev/null; then
	t "vhd: ...qemu-img reads it the same" qemu-img compare -f vpc -F vpc k.vhd endbad.vhd
fi
t "vhd: ...and writable again" keel io -c 'write -P 9 7M 512' endbad.vhd
t "vhd: -r leaks gives back the leaked block" keel check -r leaks leak.vhd
t "vhd: ...the file is its old size" test "$(stat -c %s leak.vhd)" = "$(stat -c %s k.vhd)"
t "vhd: ...and clean" keel check leak.vhd
keel create -f raw r.raw 1M >/dev/null
expect_err "raw: nothing to check, said so" "has no metadata to check" keel check r.raw
finish
