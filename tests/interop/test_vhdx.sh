#!/usr/bin/env bash
# VHDX against qemu-img and libvhdi (vhdiinfo, vhdimount).
#
# READ:  qemu-img makes VHDX images (dynamic and fixed, block sizes 1M..256M,
#        block_state_zero on/off, log sizes) from raw sources with a known
#        pattern; keel reads each back byte-identical to qemu-img's own
#        `convert -O raw` (keel compare, and a sparse-aware byte compare).
# WRITE: keel writes dynamic and fixed VHDX (512 and 4096-byte sectors);
#        qemu-img check passes, qemu-img compare says identical (qemu 7.2
#        cannot open 4096-byte-sector VHDX), and libvhdi opens them and
#        reads the same bytes through vhdimount when FUSE works.
# CHAINS: a differencing VHDX built by keel reads the parent for absent
#        sectors, in keel and in libvhdi; a wrong parent is refused.
. "$(dirname "$0")/../shell/lib.sh"

command -v qemu-img >/dev/null 2>&1 || skip "qemu-img not installed"
have_vhdi=0
command -v vhdiinfo >/dev/null 2>&1 && have_vhdi=1
[ $have_vhdi = 1 ] || echo "# libvhdi-utils missing: vhdiinfo/vhdimount checks skipped"
MiB=1048576

# sparse_cmp A B: byte equality of two files of the same size, reading only
# the data extents either file has (holes are zeros), so 4 GiB sparse files
# compare in a moment. Independent of keel.
sparse_cmp() {
	python3 - "$1" "$2" <<'PY'
import errno, os, sys
fa, fb = (os.open(p, os.O_RDONLY) for p in sys.argv[1:3])
sa, sb = os.fstat(fa).st_size, os.fstat(fb).st_size
if sa != sb:
    sys.exit("sizes differ: %d %d" % (sa, sb))
def segs(fd, size):
    out, off = [], 0
    while off < size:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            return [(0, size)]  # no SEEK_DATA: all of it is data
        h = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, h))
        off = h
    return out
merged = []
for s, e in sorted(segs(fa, sa) + segs(fb, sb)):
    if merged and s <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], e)
    else:
        merged.append([s, e])
for s, e in merged:
    off = s
    while off < e:
        n = min(e - off, 1 << 20)
        x, y = os.pread(fa, n, off), os.pread(fb, n, off)
        if x != y:
            i = next(i for i in range(n) if x[i] != y[i])
            sys.exit("differ at byte %d" % (off + i))
        off += n
PY
}

# ---------------------------------------------------------------- sources
# small: data, zero runs, holes and an odd tail (not a multiple of 512)
pattern_file "$TMP/small.raw" $((37 * MiB + 12345))
# fixed: qemu 7.2 writes fixed VHDX whose last block it cannot reopen unless
# the size is a multiple of the block size, so 256 MiB with data at both ends
pattern_file "$TMP/pat.raw" $((24 * MiB))
truncate -s $((256 * MiB)) "$TMP/fixed.raw"
dd if="$TMP/pat.raw" of="$TMP/fixed.raw" bs=1M count=20 conv=notrunc status=none
dd if="$TMP/pat.raw" of="$TMP/fixed.raw" bs=1M skip=20 seek=252 count=4 conv=notrunc status=none
# big: over 4 GiB with data just below, across and beyond 4 GiB, odd tail
big_size=$((4096 * MiB + 5 * MiB + 1000))
truncate -s $big_size "$TMP/big.raw"
dd if="$TMP/pat.raw" of="$TMP/big.raw" bs=1M count=6 conv=notrunc status=none
dd if="$TMP/pat.raw" of="$TMP/big.raw" bs=1M skip=6 seek=4094 count=4 conv=notrunc status=none
dd if="$TMP/pat.raw" of="$TMP/big.raw" bs=1000 skip=100 seek=$(((big_size - 3000) / 1000)) \
	count=3 conv=notrunc status=none
# big fixed: a multiple of every block size, data beyond 4 GiB
truncate -s $((4096 * MiB + 256 * MiB)) "$TMP/bigfixed.raw"
dd if="$TMP/pat.raw" of="$TMP/bigfixed.raw" bs=1M count=4 conv=notrunc status=none
dd if="$TMP/pat.raw" of="$TMP/bigfixed.raw" bs=1M skip=4 seek=4200 count=8 conv=notrunc status=none

# ---------------------------------------------------------------- READ matrix
read_case() { # NAME SRC OPTS
	local name=$1 src=$2 opts=$3 v="$TMP/q-$1.vhdx"
	if ! qemu-img convert -f raw -O vhdx -o "$opts" "$src" "$v" >"$TMP/.q" 2>&1; then
		bad "read $name: qemu-img convert -o $opts failed"; sed 's/^/    # /' "$TMP/.q"; return
	fi
	qemu-img convert -f vhdx -O raw "$v" "$TMP/q-$name.ref"
	t "read $name: probed as vhdx" sh -c "'$KEEL' info '$v' | grep -q 'file format: vhdx'"
	t "read $name: keel compare with qemu's raw" keel compare -f vhdx -F raw "$v" "$TMP/q-$name.ref"
	t "read $name: keel convert -O raw byte-identical to qemu-img convert" \
		sh -c "'$KEEL' -q convert -O raw '$v' '$TMP/k-$name.raw' && \
		       $(declare -f sparse_cmp); sparse_cmp '$TMP/k-$name.raw' '$TMP/q-$name.ref'"
	t "read $name: same as the source" keel compare "$src" "$v"
	rm -f "$v" "$TMP/q-$name.ref" "$TMP/k-$name.raw"
}

for bs in 1M 8M 32M 256M; do
	for bsz in on off; do
		read_case "dyn-$bs-bsz$bsz" "$TMP/small.raw" "subformat=dynamic,block_size=$bs,block_state_zero=$bsz"
		read_case "fix-$bs-bsz$bsz" "$TMP/fixed.raw" "subformat=fixed,block_size=$bs,block_state_zero=$bsz"
	done
done
read_case "dyn-log4M" "$TMP/small.raw" "subformat=dynamic,log_size=4M"
read_case "dyn-auto-bs" "$TMP/small.raw" "subformat=dynamic"
read_case "big-dyn-1M" "$TMP/big.raw" "subformat=dynamic,block_size=1M"
read_case "big-dyn-32M" "$TMP/big.raw" "subformat=dynamic,block_size=32M,block_state_zero=off"
read_case "big-fix-32M" "$TMP/bigfixed.raw" "subformat=fixed,block_size=32M,block_state_zero=off"

# a qemu image written in place (BAT updates go through qemu's log), then read
qemu-img create -q -f vhdx -o block_size=1M "$TMP/qw.vhdx" 64M
qemu-img convert -f raw -O raw -n "$TMP/pat.raw" "$TMP/qw.vhdx" 2>/dev/null ||
	qemu-io -f vhdx -c "write -P 0x6b 3M 5M" "$TMP/qw.vhdx" >/dev/null
qemu-img convert -f vhdx -O raw "$TMP/qw.vhdx" "$TMP/qw.ref"
t "read qemu-written image" keel compare -f vhdx -F raw "$TMP/qw.vhdx" "$TMP/qw.ref"
t "read qemu-written image: log empty after qemu's clean close" \
	sh -c "'$KEEL' info '$TMP/qw.vhdx' | grep -q '^log: empty'"

# ---------------------------------------------------------------- WRITE matrix
mnt="$TMP/mnt"
mkdir -p "$mnt"
fuse_ok=0
if [ $have_vhdi = 1 ] && [ -e /dev/fuse ] && command -v fusermount >/dev/null 2>&1; then
	qemu-img convert -f raw -O vhdx "$TMP/pat.raw" "$TMP/probe.vhdx"
	if vhdimount "$TMP/probe.vhdx" "$mnt" >/dev/null 2>&1 && [ -e "$mnt/vhdi1" ]; then
		fuse_ok=1
	fi
	fusermount -u "$mnt" 2>/dev/null
fi
[ $fuse_ok = 1 ] || echo "# vhdimount (FUSE) does not work here: byte checks through libvhdi skipped"

# libvhdi_read IMG RAW [N]: mount IMG with vhdimount, compare its layer N with RAW
libvhdi_read() {
	local img=$1 raw=$2 n=${3:-1} rc
	vhdimount "$img" "$mnt" >/dev/null 2>&1 || return 1
	sparse_cmp "$mnt/vhdi$n" "$raw"
	rc=$?
	fusermount -u "$mnt"
	return $rc
}

# slices_cmp A B: compare 1 MiB slices at the start, around 4 GiB and at the
# end (for 4 GiB images behind FUSE, which has no SEEK_DATA to skip holes)
slices_cmp() {
	local a=$1 b=$2 size off
	size=$(stat -c %s "$b")
	for off in 0 $((4095 * MiB)) $((4096 * MiB)) $((size - MiB)); do
		[ $off -ge 0 ] && [ $off -lt "$size" ] || continue
		cmp <(dd if="$a" bs=64K skip=$((off / 65536)) count=16 status=none) \
		    <(dd if="$b" bs=64K skip=$((off / 65536)) count=16 status=none) || return 1
	done
}

write_case() { # NAME SRC OPTS QEMU(1: qemu can open it) [big]
	local name=$1 src=$2 opts=$3 qemu=$4 big=${5:-} v="$TMP/w-$1.vhdx"
	if ! keel -q convert -O vhdx -o "$opts" "$src" "$v" >"$TMP/.k" 2>&1; then
		bad "write $name: keel convert -o $opts failed"; sed 's/^/    # /' "$TMP/.k"; return
	fi
	t "write $name: keel reads it back" keel compare "$src" "$v"
	keel -q convert -O raw "$v" "$TMP/w-$name.raw"
	if [ "$qemu" = 1 ]; then
		t "write $name: qemu-img check" qemu-img check -f vhdx "$v"
		if [ -z "$big" ]; then
			t "write $name: qemu-img compare" qemu-img compare -f raw -F vhdx "$src" "$v"
		else
			# qemu's vhdx driver has no block status: compare reads all 4 GiB
			# (30 s); its convert is quicker and compared sparse-aware
			t "write $name: qemu-img convert reads the same bytes" bash -c \
				"qemu-img convert -f vhdx -O raw '$v' '$TMP/w-$name.q' && \
				 $(declare -f sparse_cmp); sparse_cmp '$TMP/w-$name.q' '$TMP/w-$name.raw'"
			rm -f "$TMP/w-$name.q"
		fi
	fi
	if [ $have_vhdi = 1 ]; then
		t "write $name: vhdiinfo opens it" sh -c "vhdiinfo '$v' | grep -q 'VHDX'"
	fi
	if [ $fuse_ok = 1 ]; then
		if [ -z "$big" ]; then
			t "write $name: libvhdi reads the same bytes (vhdimount)" \
				libvhdi_read "$v" "$TMP/w-$name.raw"
		else
			t "write $name: libvhdi reads the same bytes below, across and past 4 GiB" bash -c \
				"vhdimount '$v' '$mnt' >/dev/null && MiB=$MiB && $(declare -f slices_cmp); \
				 slices_cmp '$mnt/vhdi1' '$TMP/w-$name.raw'; rc=\$?; fusermount -u '$mnt'; exit \$rc"
		fi
	fi
	rm -f "$v" "$TMP/w-$name.raw"
}

write_case dyn "$TMP/small.raw" "subformat=dynamic" 1
write_case dyn-1M "$TMP/small.raw" "subformat=dynamic,block_size=1M" 1
write_case dyn-256M "$TMP/small.raw" "subformat=dynamic,block_size=256M,log_size=2M" 1
write_case fix "$TMP/small.raw" "subformat=fixed" 1
write_case fix-1M "$TMP/small.raw" "subformat=fixed,block_size=1M" 1
write_case fix-bsz "$TMP/fixed.raw" "subformat=fixed,block_size=8M,block_state_zero=on" 1
write_case dyn-4k "$TMP/small.raw" "subformat=dynamic,logical_sector_size=4096" 0
write_case fix-4k "$TMP/small.raw" "subformat=fixed,logical_sector_size=4096,block_size=2M" 0
write_case big-dyn "$TMP/big.raw" "subformat=dynamic,block_size=8M" 1 big

# Hyper-V style fixed: every payload block FULLY_PRESENT (qemu's map shows data)
keel -q convert -O vhdx -o subformat=fixed,block_size=1M "$TMP/pat.raw" "$TMP/hv.vhdx"
t "fixed disks are fully allocated (no ZERO blocks)" sh -c \
	"qemu-img map -f vhdx --output=json '$TMP/hv.vhdx' | python3 -c 'import json,sys; m=json.load(sys.stdin); assert all(e[\"data\"] for e in m), m'"
t "info: fixed subformat" sh -c "'$KEEL' info '$TMP/hv.vhdx' | grep -q 'file format: vhdx (fixed)'"
t "info json: block size and sector sizes" sh -c "'$KEEL' info --output json '$TMP/hv.vhdx' | python3 -c '
import json,sys
j=json.load(sys.stdin)
j = j[0] if isinstance(j, list) else j
d=j[\"details\"]
assert d[\"block size\"]==\"1048576\" and d[\"logical sector size\"]==\"512\", d
assert d[\"log\"]==\"empty\" and d[\"has parent\"]==\"no\", d'"

# ---------------------------------------------------------------- chains
cp --sparse=always "$TMP/small.raw" "$TMP/expect.raw"
truncate -s $(((37 * MiB + 12345 + 511) / 512 * 512)) "$TMP/expect.raw" # VHDX size: whole sectors
keel -q convert -O vhdx -o block_size=1M "$TMP/small.raw" "$TMP/base.vhdx"
t "create a differencing VHDX" keel create -f vhdx -b base.vhdx "$TMP/child.vhdx"
t "info shows the parent" sh -c "'$KEEL' info '$TMP/child.vhdx' | grep -q 'parent: base.vhdx'"
t "write into the child" keel io -c "write -P 0x5a 4096 8192" -c "write -P 0x33 3M 2M" \
	-c "write -z 10M 1M" -c "write -P 0x77 20M 512" "$TMP/child.vhdx"
keel -q io -f raw -c "write -P 0x5a 4096 8192" -c "write -P 0x33 3M 2M" -c "write -z 10M 1M" \
	-c "write -P 0x77 20M 512" "$TMP/expect.raw" >/dev/null
t "child reads the parent for absent sectors" keel compare "$TMP/expect.raw" "$TMP/child.vhdx"
t "map shows both layers" sh -c "'$KEEL' map '$TMP/child.vhdx' | grep -q base.vhdx"
if [ $have_vhdi = 1 ]; then
	t "vhdiinfo sees a differencing disk" sh -c "vhdiinfo '$TMP/child.vhdx' | grep -q 'Differential'"
fi
if [ $fuse_ok = 1 ]; then
	# vhdimount exposes the parent as vhdi1 and the child (with its chain) as vhdi2
	t "libvhdi reads the chain like keel" libvhdi_read "$TMP/child.vhdx" "$TMP/expect.raw" 2
fi
t "convert -B writes a differencing VHDX over a VHDX parent" \
	keel convert -O vhdx -B base.vhdx -F vhdx "$TMP/expect.raw" "$TMP/child2.vhdx"
t "the overlay reads like its source" keel compare "$TMP/expect.raw" "$TMP/child2.vhdx"
t "the overlay holds only what differs" sh -c \
	"[ \$(stat -c %s '$TMP/child2.vhdx') -lt \$(stat -c %s '$TMP/base.vhdx') ]"

# commit and rebase (keel commit folds the child into the parent)
keel -q convert -O vhdx -o block_size=1M "$TMP/small.raw" "$TMP/cbase.vhdx"
keel -q create -f vhdx -b cbase.vhdx "$TMP/cchild.vhdx"
cp --sparse=always "$TMP/small.raw" "$TMP/cexpect.raw"
truncate -s $(((37 * MiB + 12345 + 511) / 512 * 512)) "$TMP/cexpect.raw"
if [ $fuse_ok = 1 ]; then
	t "libvhdi reads an untouched child as its parent" libvhdi_read "$TMP/cchild.vhdx" "$TMP/cexpect.raw" 2
fi
ops=(-c "write -P 0x11 512 4k" -c "write -P 0x22 6M 2M" -c "write -z 12M 2M" -c "write -P 0x44 30M 100k")
keel -q io "${ops[@]}" "$TMP/cchild.vhdx" >/dev/null
keel -q io -f raw "${ops[@]}" "$TMP/cexpect.raw" >/dev/null
t "the child before commit" keel compare "$TMP/cexpect.raw" "$TMP/cchild.vhdx"
t "keel commit child.vhdx" keel commit "$TMP/cchild.vhdx"
t "after commit the chain reads the same" keel compare "$TMP/cexpect.raw" "$TMP/cchild.vhdx"
t "after commit the parent alone holds the data" keel compare "$TMP/cexpect.raw" "$TMP/cbase.vhdx"
t "after commit the child is empty" sh -c "'$KEEL' map --output json '$TMP/cchild.vhdx' | \
	python3 -c 'import json,sys; m=json.load(sys.stdin); assert all(e.get(\"depth\",0)>=1 or e[\"type\"]!=\"data\" for e in m), m'"
if [ $fuse_ok = 1 ]; then
	t "libvhdi reads the committed chain" libvhdi_read "$TMP/cchild.vhdx" "$TMP/cexpect.raw" 2
	t "libvhdi reads the committed parent" libvhdi_read "$TMP/cbase.vhdx" "$TMP/cexpect.raw" 1
fi
cp "$TMP/cbase.vhdx" "$TMP/cbase2.vhdx"
t "rebase -u onto a copy of the parent" keel rebase -u -b cbase2.vhdx "$TMP/cchild.vhdx"
rm -f "$TMP/cbase.vhdx"
t "the rebased child reads through the copy" keel compare "$TMP/cexpect.raw" "$TMP/cchild.vhdx"
t "info shows the new parent" sh -c "'$KEEL' info '$TMP/cchild.vhdx' | grep -q 'parent: cbase2.vhdx'"

keel -q io -c "write -P 0x01 0 512" "$TMP/base.vhdx" >/dev/null
expect_err "a modified parent is refused (DataWriteGuid != parent_linkage)" "child.vhdx.*wrong parent" \
	keel compare "$TMP/expect.raw" "$TMP/child.vhdx"
rm -f "$TMP/base.vhdx"
expect_err "a missing parent is an error" "child.vhdx.*not found" \
	keel convert -O raw "$TMP/child.vhdx" "$TMP/out.raw"
t "info --no-parent still describes the child" keel info --no-parent "$TMP/child.vhdx"

finish
