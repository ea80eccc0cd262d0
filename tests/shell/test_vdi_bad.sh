#!/usr/bin/env bash
# Bad VDI input through the CLI: every damaged file gives "keel: error:"
# naming the file and what is wrong; never a crash, a hang or silent data.
. "$(dirname "$0")/lib.sh"

B=$TMP/bad
mkdir -p "$B"
keel create -f vdi "$B/good.vdi" 4M >/dev/null
keel io -c 'write -P 0x11 0 4M' "$B/good.vdi" >/dev/null
keel create -f vdi -b good.vdi "$B/child.vdi" >/dev/null

python3 - "$B" <<'PY'
import struct, sys
d = sys.argv[1]
good = open(f'{d}/good.vdi', 'rb').read()

def out(name, b):
    open(f'{d}/{name}.vdi', 'wb').write(bytes(b))

def patch(name, off, fmt, v, src=good):
    b = bytearray(src)
    struct.pack_into(fmt, b, off, v)
    out(name, b)

out('tiny', good[:100])
bmap, data = struct.unpack_from('<II', good, 0x154)
out('trunc-data', good[:data + (2 << 20) + 5000])
patch('sig', 0x40, '<I', 0x12345678)
patch('version', 0x44, '<I', 0x00020000)
patch('hsize', 0x48, '<I', 0xfffffff0)
patch('undo', 0x4c, '<I', 3)
patch('type9', 0x4c, '<I', 9)
patch('sector', 0x168, '<I', 4096)
patch('bs-zero', 0x178, '<I', 0)
patch('bs-odd', 0x178, '<I', 3000)
patch('extra', 0x17c, '<I', 0x7fffffff)
patch('too-few-blocks', 0x170, '<Q', 1 << 50)
patch('wrap-size', 0x170, '<Q', 2**64 - (1 << 19))  # rounds up to blocks past 2^64
patch('huge-count', 0x180, '<I', 0x3fffffff)
patch('count-overflow', 0x180, '<I', 0xffffffff)
patch('data-over-map', 0x158, '<I', 512)
patch('map-over-header', 0x154, '<I', 16)
patch('map-past-eof', 0x154, '<I', 0xfffff000)
patch('entry-past-eof', bmap + 4, '<I', 1000)
patch('entry-dup', bmap + 4, '<I', struct.unpack_from('<I', good, bmap)[0])
patch('null-link', 0x4c, '<I', 4)
PY

R() { keel convert -O raw "$B/$1.vdi" "$TMP/out.raw"; }
expect_err "truncated header" "tiny.vdi: file of 100 bytes is too small for a VDI header" keel info -f vdi "$B/tiny.vdi"
expect_err "truncated data area" "trunc-data.vdi: block map entry 2 .* past the end of the file" R trunc-data
expect_err "bad signature (forced -f vdi)" "sig.vdi: not a VDI" keel info -f vdi "$B/sig.vdi"
expect_err "unsupported version" "version.vdi: VDI version 2.0 is not supported" R version
expect_err "absurd header size" "hsize.vdi: VDI header size 4294967280" R hsize
expect_err "undo image" "undo.vdi: VDI undo images (type 3) are not supported" R undo
expect_err "unknown image type" "type9.vdi: VDI image type 9" R type9
expect_err "4K sectors" "sector.vdi: VDI sector size 4096 is not supported" R sector
expect_err "zero block size" "bs-zero.vdi: VDI block size 0" R bs-zero
expect_err "block size not a power of two" "bs-odd.vdi: VDI block size 3000" R bs-odd
expect_err "absurd block extra" "extra.vdi: VDI block extra data of 2147483647 bytes" R extra
expect_err "absurd disk size" "too-few-blocks.vdi: disk size 1125899906842624 needs" R too-few-blocks
expect_err "disk size that wraps when rounded up" "wrap-size.vdi: disk size 18446744073709027328 needs" R wrap-size
expect_err "absurd block count" "huge-count.vdi: block map at offset 512 (1073741823 entries) extends past" R huge-count
expect_err "block count overflow bait" "count-overflow.vdi: " R count-overflow
expect_err "data area overlapping the map" "data-over-map.vdi: data area offset 512 overlaps the block map" R data-over-map
expect_err "map overlapping the header" "map-over-header.vdi: block map offset 16 overlaps the header" R map-over-header
expect_err "map past EOF" "map-past-eof.vdi: block map at offset 4294963200" R map-past-eof
expect_err "map entry past EOF" "entry-past-eof.vdi: block map entry 1 .*data block 1000" R entry-past-eof
expect_err "two entries, one block" "entry-dup.vdi: block map entries 0 and 1 both point to data block 0" R entry-dup
expect_err "differencing image without a parent UUID" "null-link.vdi: differencing VDI with a null parent" R null-link
t "damaged copies of the parent (same UUID) are skipped for the real one" R child
rm "$B/good.vdi"
expect_err "only damaged copies left: the first failure is named" "opening parent '.*' of .*child.vdi" R child
mkdir -p "$B/lone"
mv "$B/child.vdi" "$B/lone/"
expect_err "missing parent" "child.vdi: parent not found: no \\*.vdi file in $B/lone has image UUID" R lone/child
expect_err "create: larger than VDI allows" "larger than the VDI maximum" keel create -f vdi "$B/x.vdi" 2P
expect_err "create: bad subformat" "subformat must be dynamic or fixed" \
	keel create -f vdi -o subformat=sparse "$B/x.vdi" 1G
finish
