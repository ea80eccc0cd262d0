#!/usr/bin/env bash
# VMDK bad input: every damaged or hostile file gives "keel: error: ..."
# naming the file and the problem; never a crash, a hang or a huge
# allocation. Images come from keel itself, then get patched.
. "$(dirname "$0")/lib.sh"

# patch FILE OFFSET STRUCT-FORMAT VALUE... : overwrite little-endian fields
patch() {
	python3 - "$@" <<'PY'
import struct, sys
f, off, fmt = sys.argv[1], int(sys.argv[2], 0), sys.argv[3]
vals = [int(v, 0) for v in sys.argv[4:]]
with open(f, 'r+b') as fh:
    fh.seek(off); fh.write(struct.pack('<' + fmt, *vals))
PY
}
# desc_replace FILE OLD NEW : edit the embedded descriptor in place (zero-padded)
desc_replace() {
	python3 - "$@" <<'PY'
import sys
f, old, new = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
b = bytearray(open(f, 'rb').read())
lo, hi = 512, 512 * 21
area = bytes(b[lo:hi]).split(b'\0', 1)[0]
assert old in area, (old, area)
area = area.replace(old, new)
assert len(area) < hi - lo
b[lo:hi] = area + bytes(hi - lo - len(area))
open(f, 'wb').write(b)
PY
}
fresh() { cp "$TMP/good.vmdk" "$TMP/$1"; echo "$TMP/$1"; }

pattern_file "$TMP/src.raw" $((3 * 1024 * 1024))
keel convert -O vmdk "$TMP/src.raw" "$TMP/good.vmdk" >/dev/null || { echo "cannot make a VMDK"; exit 1; }
keel convert -O vmdk -o subformat=streamOptimized "$TMP/src.raw" "$TMP/good-so.vmdk" >/dev/null
t "the good image reads" keel compare "$TMP/src.raw" "$TMP/good.vmdk"
t "the good stream reads" keel compare "$TMP/src.raw" "$TMP/good-so.vmdk"
readall() { keel convert -O raw "$@" "$TMP/out.raw"; }
# header field offsets (shared/specs/vmdk.md): version 4, flags 8, capacity 12,
# grain 20, descOffset 28, descSize 36, numGTEsPerGT 44, rgd 48, gd 56, overHead 64
gd=$(python3 -c "import struct;print(struct.unpack_from('<Q',open('$TMP/good.vmdk','rb').read(),56)[0])")

# ---------------------------------------------------------------- header
head -c 100 "$TMP/good.vmdk" > "$TMP/trunc.vmdk"
expect_err "truncated header" "trunc.vmdk: truncated: 100 bytes" keel info -f vmdk "$TMP/trunc.vmdk"
head -c 2048 "$TMP/good.vmdk" > "$TMP/trunc2.vmdk"
expect_err "file cut inside the descriptor" "trunc2.vmdk.*descriptor.*past the end" keel info "$TMP/trunc2.vmdk"
f=$(fresh ver.vmdk); patch "$f" 4 I 9
expect_err "unknown version" "ver.vmdk.*version 9 is not supported" keel info "$f"
f=$(fresh nl.vmdk); patch "$f" 73 4B 0x0a 0x0a 0x0a 0x0a
expect_err "newline check bytes damaged" "nl.vmdk.*text-mode transfer" keel info "$f"
f=$(fresh cap.vmdk); patch "$f" 12 Q 0x7fffffffffffffff
expect_err "absurd capacity" "cap.vmdk.*capacity of .* sectors is larger" keel info "$f"
f=$(fresh cap2.vmdk); patch "$f" 12 Q $((1 << 39))
expect_err "capacity whose directory cannot fit the file" "cap2.vmdk: grain directory .* extends past the end" keel info "$f"
f=$(fresh grain.vmdk); patch "$f" 20 Q 3
expect_err "grain size not a power of two" "grain.vmdk.*grain size 3 sectors" keel info "$f"
f=$(fresh grain2.vmdk); patch "$f" 20 Q $((1 << 40))
expect_err "huge grain size" "grain2.vmdk.*grain size" keel info "$f"
f=$(fresh gtes.vmdk); patch "$f" 44 I 0
expect_err "zero entries per grain table" "gtes.vmdk.*0 grain table entries" keel info "$f"
f=$(fresh gtes2.vmdk); patch "$f" 44 I 0xffffffff
expect_err "absurd entries per grain table" "gtes2.vmdk.*grain table entries" keel info "$f"
f=$(fresh gdoff.vmdk); patch "$f" 56 Q 0x7fffffff
expect_err "grain directory past EOF" "gdoff.vmdk: grain directory .* past the end" keel info "$f"
f=$(fresh gdoff2.vmdk); patch "$f" 56 Q 0xfffffffffffffff0
expect_err "grain directory offset overflow bait" "gdoff2.vmdk: grain directory" keel info "$f"
f=$(fresh desc.vmdk); patch "$f" 36 Q 0xffffffffffff
expect_err "absurd descriptor size" "desc.vmdk.*descriptor of .* sectors is too large" keel info "$f"
f=$(fresh comp.vmdk); patch "$f" 77 H 7
expect_err "unknown compression" "comp.vmdk.*compression algorithm 7" keel info "$f"

# ---------------------------------------------------------------- tables
f=$(fresh gt.vmdk); patch "$f" $((gd * 512)) I 0x7ffffff0
expect_err "grain table past EOF" "gt.vmdk: grain table 0 at sector .* past the end" readall "$f"
gt0=$(python3 -c "import struct;print(struct.unpack_from('<I',open('$TMP/good.vmdk','rb').read(),$gd*512)[0])")
f=$(fresh grainp.vmdk); patch "$f" $((gt0 * 512)) I 0x7ffffff0
expect_err "grain past EOF" "grainp.vmdk: grain data at offset .* past the end" readall "$f"
f=$(fresh gte1.vmdk); patch "$f" $((gt0 * 512)) I 1
expect_err "zeroed-grain entry without the flag" "gte1.vmdk: grain 0 has table entry 1" readall "$f"

# ---------------------------------------------------------------- stream
so="$TMP/good-so.vmdk"
first=$(python3 -c "import struct;print(struct.unpack_from('<Q',open('$so','rb').read(),64)[0]*512)")
cp "$so" "$TMP/bomb.vmdk"
python3 - "$TMP/bomb.vmdk" "$first" <<'PY'
import struct, sys, zlib
f, off = sys.argv[1], int(sys.argv[2])
b = bytearray(open(f, 'rb').read())
lba, size = struct.unpack_from('<QI', b, off)
bomb = zlib.compress(bytes(4 << 20))          # inflates to 64 grains
assert len(bomb) <= size
b[off + 8:off + 12] = struct.pack('<I', len(bomb))
b[off + 12:off + 12 + len(bomb)] = bomb
open(f, 'wb').write(b)
PY
expect_err "compressed grain inflating past the grain" "bomb.vmdk: compressed grain 0 .* inflates past" readall "$TMP/bomb.vmdk"
cp "$so" "$TMP/msize.vmdk"; patch "$TMP/msize.vmdk" $((first + 8)) I 0xffffffff
expect_err "marker with an absurd size" "msize.vmdk: compressed grain 0 .* claims 4294967295 bytes" readall "$TMP/msize.vmdk"
cp "$so" "$TMP/mlba.vmdk"; patch "$TMP/mlba.vmdk" "$first" Q 999999
expect_err "marker for the wrong sector" "mlba.vmdk: grain marker at sector .* is for sector 999999" readall "$TMP/mlba.vmdk"
cp "$so" "$TMP/zbad.vmdk"; patch "$TMP/zbad.vmdk" $((first + 12)) Q 0x1122334455667788
expect_err "corrupt zlib data" "zbad.vmdk: compressed grain 0 .* corrupt" readall "$TMP/zbad.vmdk"
head -c $(( $(stat -c %s "$so") - 2048 )) "$so" > "$TMP/nofoot.vmdk"
expect_err "stream without its footer" "nofoot.vmdk.*footer" keel info "$TMP/nofoot.vmdk"
cp "$so" "$TMP/rw.vmdk"
expect_err "a stream with data is not writable" "append-only" keel io -f vmdk -c "write 0 4k" "$TMP/rw.vmdk"

# ---------------------------------------------------------------- descriptors
mkdir -p "$TMP/d/sub"
printf '# Disk DescriptorFile\nversion=1\nCID=00000001\n' > "$TMP/d/noext.vmdk"
expect_err "descriptor without extents" "noext.vmdk: the descriptor lists no extents" keel info "$TMP/d/noext.vmdk"
python3 -c "print('# Disk DescriptorFile\nversion=1\nCID=' + 'a' * 100000)" > "$TMP/d/long.vmdk"
expect_err "huge descriptor line" "long.vmdk: descriptor line 3 is longer" keel info "$TMP/d/long.vmdk"
python3 -c "print('# Disk DescriptorFile\n' + 'x=1\n' * 300000)" > "$TMP/d/huge.vmdk"
expect_err "huge descriptor file" "huge.vmdk: not a VMDK descriptor" keel info -f vmdk "$TMP/d/huge.vmdk"
truncate -s 1M "$TMP/d/outside.bin"
printf '# Disk DescriptorFile\nversion=1\nRW 2048 FLAT "../outside.bin" 0\n' > "$TMP/d/sub/esc.vmdk"
expect_err "extent escaping with ../" "esc.vmdk: extent '../outside.bin'.*outside the image's directory" keel info "$TMP/d/sub/esc.vmdk"
t "--allow-external-backing lets it through" keel info --allow-external-backing "$TMP/d/sub/esc.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 1 FLAT "/etc/passwd" 0\n' > "$TMP/d/sub/abs.vmdk"
expect_err "absolute extent path" "abs.vmdk: extent '/etc/passwd'.*outside" keel info "$TMP/d/sub/abs.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 100 SPARSE "gone-s001.vmdk"\n' > "$TMP/d/gone.vmdk"
expect_err "missing extent file" "gone.vmdk: extent 'gone-s001.vmdk'.*not found" keel info "$TMP/d/gone.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 4096 FLAT "outside.bin" 0\n' > "$TMP/d/short.vmdk"
expect_err "flat extent shorter than declared" "outside.bin: flat extent file holds 1048576 bytes" keel info "$TMP/d/short.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 100 SPARSE "outside.bin"\n' > "$TMP/d/notsparse.vmdk"
expect_err "sparse extent without a header" "outside.bin: sparse extent header has no KDMV magic" keel info "$TMP/d/notsparse.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 100 VMFSSPARSE "outside.bin"\n' > "$TMP/d/cowd.vmdk"
expect_err "vmfsSparse extent without a header" "outside.bin: sparse extent header has no KDMV magic" keel info "$TMP/d/cowd.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 100 SESPARSE "outside.bin"\n' > "$TMP/d/sesparse.vmdk"
expect_err "seSparse extent without a header" "outside.bin: no seSparse header magic" keel info "$TMP/d/sesparse.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 100 VMFSRDM "outside.bin"\n' > "$TMP/d/rdm.vmdk"
expect_err "unsupported extent type" "rdm.vmdk: extent type VMFSRDM .* not supported" keel info "$TMP/d/rdm.vmdk"
printf '# Disk DescriptorFile\nversion=1\nRW 100 FLAT "outside.bin" 0\n\001\002\003' > "$TMP/d/bin.vmdk"
expect_err "binary garbage in a descriptor" "bin.vmdk: descriptor line 4 holds control byte" keel info "$TMP/d/bin.vmdk"
f=$(fresh edesc.vmdk); desc_replace "$f" 'CID=' 'CID=zz'
expect_err "garbage in the embedded descriptor" "edesc.vmdk: .*CID 'zz" keel info "$f"

# ---------------------------------------------------------------- parents
keel create -f vmdk "$TMP/pa.vmdk" 4M >/dev/null
keel create -f vmdk -b pa.vmdk "$TMP/pb.vmdk" >/dev/null
cp "$TMP/pb.vmdk" "$TMP/pc.vmdk"
desc_replace "$TMP/pb.vmdk" 'parentFileNameHint="pa.vmdk"' 'parentFileNameHint="pc.vmdk"'
desc_replace "$TMP/pc.vmdk" 'parentFileNameHint="pa.vmdk"' 'parentFileNameHint="pb.vmdk"'
desc_replace "$TMP/pc.vmdk" 'parentCID=' 'parentCID=ffffffff
#'
desc_replace "$TMP/pb.vmdk" 'parentCID=' 'parentCID=ffffffff
#'
expect_err "parent loop" "loops back" readall "$TMP/pb.vmdk"
t "keel info shows a child whose chain is broken, with a warning" sh -c "'$KEEL' info '$TMP/pb.vmdk' 2>&1 | grep -q 'warning: .*loops back'"
cp "$TMP/pb.vmdk" "$TMP/self.vmdk"; desc_replace "$TMP/self.vmdk" '"pc.vmdk"' '"self.vmdk"'
expect_err "image that is its own parent" "loops back" readall "$TMP/self.vmdk"
cp "$TMP/pb.vmdk" "$TMP/orphan.vmdk"; desc_replace "$TMP/orphan.vmdk" '"pc.vmdk"' '"nowhere.vmdk"'
expect_err "missing parent" "orphan.vmdk.*nowhere.vmdk' not found" readall "$TMP/orphan.vmdk"
cp "$TMP/pb.vmdk" "$TMP/rawp.vmdk"; desc_replace "$TMP/rawp.vmdk" '"pc.vmdk"' '"src.raw"'
expect_err "parent that is not a VMDK" "rawp.vmdk: parent 'src.raw' is a raw image" readall "$TMP/rawp.vmdk"
finish
