#!/usr/bin/env bash
# tests/shell/test_check_formats.sh - keel check on VHD, VHDX, VDI and VMDK: clean
# images (keel's own, qemu-img's, a Windows sample) pass with the right
# allocation counts; the damage opening tolerates (a lost VHD end footer, a
# footer copy that disagrees, a wrong VDI allocated count) and leaked blocks
# are reported with exit 3; -r is refused; raw still has nothing to check.
. "$(dirname "$0")/lib.sh"

cd "$TMP"
SAMPLES=${KEEL_INTEROP_SAMPLES:-$ROOT/../shared/interop-samples}
[ -d "$SAMPLES" ] || SAMPLES=/work/shared/interop-samples

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

# VMDK sparse extents: leaks are grains (or tables) past the header's
# overhead that no table names, left by a writer that crashed between
# appending a grain and writing its table entry. Clean images first, from
# keel, qemu-img and VMware (a leak count there would be a false alarm).
keel create -f vmdk k.vmdk 64M >/dev/null
keel io -c 'write -P 0x11 0 1M' -c 'write -P 0x22 40M 64k' k.vmdk >/dev/null
t "vmdk: keel's image checks clean" keel check k.vmdk
if [ -f "$SAMPLES/ext2.vmdk" ]; then
	t "vmdk: VMware's sample checks clean" keel check "$SAMPLES/ext2.vmdk"
else
	echo "SKIP: interop sample ext2.vmdk not found"
fi
if command -v qemu-img >/dev/null; then
	qemu-io -f vmdk -c 'write -P 0x33 10M 1M' k.vmdk >/dev/null
	t "vmdk: ...and after qemu-io allocated in it" keel check k.vmdk
	for sub in monolithicSparse twoGbMaxExtentSparse; do
		qemu-img create -q -f vmdk -o subformat=$sub "q-$sub.vmdk" 64M
		qemu-io -f vmdk -c 'write -P 1 0 1M' -c 'write 63M 512' "q-$sub.vmdk" >/dev/null
		t "vmdk: qemu-img's $sub checks clean, no leaks" \
			test "$(field "q-$sub.vmdk" clean)/$(field "q-$sub.vmdk" leaks)" = True/0
	done
fi
cp k.vmdk vleak.vmdk
truncate -s +196608 vleak.vmdk   # three grains no table names
expect_rc 3 "vmdk: three unreferenced grains at the end exit 3" keel check vleak.vmdk
t "vmdk: json counts 3 leaks, no corruption" \
	test "$(field vleak.vmdk leaks)/$(field vleak.vmdk corruptions)" = 3/0
t "vmdk: the leak is named by sector" grep -q "the 384 sectors at the end of the file (from sector [0-9]*) are used by nothing" \
	<(out vleak.vmdk)
t "vmdk: -r leaks cuts them off" keel check -r leaks vleak.vmdk
t "vmdk: ...the file is its old size" test "$(stat -c %s vleak.vmdk)" = "$(stat -c %s k.vmdk)"
t "vmdk: ...and clean" keel check vleak.vmdk
t "vmdk: ...same content" keel compare k.vmdk vleak.vmdk
t "vmdk: ...and writable" keel io -c 'write -P 0x44 30M 64k' vleak.vmdk
t "vmdk: ...clean after that write" keel check vleak.vmdk
qemu-img convert -q -f vmdk -O vmdk -o subformat=streamOptimized k.vmdk ks.vmdk 2>/dev/null ||
	keel -q convert -O vmdk -o subformat=streamOptimized k.vmdk ks.vmdk
t "vmdk: check -p --verify-data draws a progress bar to 100%" sh -c "'$KEEL' check -p --verify-data ks.vmdk 2>&1 >/dev/null | grep -q 'verifying \[#*\] 100.0%'"
# a leak that a later write buried inside the file is reported, not moved
cp k.vmdk vin.vmdk
truncate -s +65536 vin.vmdk
keel io -c 'write -P 0x55 50M 64k' vin.vmdk >/dev/null
expect_rc 3 "vmdk: a leaked grain inside the file exits 3" keel check vin.vmdk
t "vmdk: ...named by its sectors" grep -q "sectors [0-9]*-[0-9]* are used by nothing (leaked)" <(out vin.vmdk)
expect_rc 3 "vmdk: -r leaks cannot give it back" keel check -r leaks vin.vmdk
t "vmdk: ...and the data is intact" keel io -c 'read -P 0x55 50M 64k' -c 'read -P 0x11 0 1M' vin.vmdk
# a table entry damaged to point past the end: the grain it lost is among
# the "leaked" space, so -r leaks keeps it
cp k.vmdk vdmg.vmdk
python3 - <<'PY'
import struct
f = open('vdmg.vmdk', 'r+b')
f.seek(56); gd = struct.unpack('<Q', f.read(8))[0]
f.seek(gd * 512); gt = struct.unpack('<I', f.read(4))[0]
f.seek(gt * 512); f.write(struct.pack('<I', 1 << 30))    # grain 0 -> far past the end
PY
truncate -s +65536 vdmg.vmdk   # and a leaked tail
sum=$(sha256sum <vdmg.vmdk)
expect_rc 3 "vmdk: a grain entry past the end exits 3, even with -r all" keel check -r all vdmg.vmdk
t "vmdk: ...-r says why it repairs nothing" grep -q "nothing repaired: 1 error(s) in the grain tables cannot be" <(keel check -r all vdmg.vmdk 2>&1)
t "vmdk: ...the file is untouched: the redundant table still has grain 0" test "$sum" = "$(sha256sum <vdmg.vmdk)"

# the header's directory offset damaged onto zeros: every grain looks
# leaked; the redundant directory shows the damage, and -r keeps the data
cp k.vmdk vgd.vmdk
python3 - <<'PY'
import struct
f = open('vgd.vmdk', 'r+b')
f.seek(28); desc_off, desc_size = struct.unpack("<QQ", f.read(16))
f.seek((desc_off + desc_size - 1) * 512); assert f.read(512) == bytes(512)
f.seek(56); f.write(struct.pack('<Q', desc_off + desc_size - 1))   # the descriptor's zero padding
PY
sum=$(sha256sum <vgd.vmdk)
expect_rc 3 "vmdk: a directory offset onto zeros exits 3 under -r all" keel check -r all vgd.vmdk
t "vmdk: ...naming the directory entry the redundant copy still has" grep -q "grain directory entry 0 names no table, but the redundant directory names one" <(keel check vgd.vmdk 2>&1)
t "vmdk: ...and the grains it lost are still in the file" test "$sum" = "$(sha256sum <vgd.vmdk)"

# grain overlapping a grain table: writes through one corrupt the other
python3 - <<'PY'
import struct
d = bytearray(open('k.vmdk', 'rb').read())
gd = struct.unpack_from('<Q', d, 56)[0]
gt = struct.unpack_from('<I', d, gd * 512)[0]
struct.pack_into('<I', d, gt * 512 + 4 * 3, gt)   # grain 3 -> the table itself
open('ovl.vmdk', 'wb').write(d)
PY
python3 - <<'PY'
import struct
d = bytearray(open('k.vmdk', 'rb').read())
gd = struct.unpack_from('<Q', d, 56)[0]
gt0 = struct.unpack_from('<I', d, gd * 512)[0]
struct.pack_into('<I', d, gt0 * 512 + 4 * 3, gt0 - 1)   # grain 3 spans both tables and more
open('ovl2.vmdk', 'wb').write(d)
PY
t "vmdk: one grain over two tables and a grain: three overlaps" \
	test "$(keel check ovl2.vmdk 2>&1 | grep -c 'overlaps grain at sector')" = 3
expect_rc 3 "vmdk: a grain over its own table exits 3" keel check ovl.vmdk
t "vmdk: ...as corruption" test "$(field ovl.vmdk corruptions)" -ge 1
t "vmdk: ...and named" grep -q "grain table at sector [0-9]* overlaps grain\|grain at sector [0-9]* overlaps grain table" <(out ovl.vmdk)

keel create -f raw r.raw 1M >/dev/null
expect_err "raw: nothing to check, said so" "has no metadata to check" keel check r.raw
finish
