#!/usr/bin/env bash
# Bad VHD input through the CLI: every damaged file gives "keel: error:"
# naming the file and what is wrong; never a crash, a hang or silent data.
. "$(dirname "$0")/lib.sh"

B=$TMP/bad
mkdir -p "$B"
# A dynamic image with data in both blocks, a differencing child, a fixed one.
keel create -f vhd -o force_size=on "$B/good.vhd" 4M >/dev/null
keel io -c 'write -P 0x11 0 4M' "$B/good.vhd" >/dev/null
keel create -f vhd -o subformat=fixed,force_size=on "$B/fixed.vhd" 1M >/dev/null
keel create -f vhd -b good.vhd "$B/child.vhd" >/dev/null
keel io -c 'write -P 0x22 0 64K' "$B/child.vhd" >/dev/null

python3 - "$B" <<'PY'
import os, struct, sys
d = sys.argv[1]
good = open(f'{d}/good.vhd', 'rb').read()
child = open(f'{d}/child.vhd', 'rb').read()
fixed = open(f'{d}/fixed.vhd', 'rb').read()

def csum(b):
    return ~sum(b) & 0xffffffff

def fix_footers(b, both=True):
    for off in ([0, len(b) - 512] if both else [len(b) - 512]):
        b[off + 64:off + 68] = bytes(4)
        b[off + 64:off + 68] = struct.pack('>I', csum(b[off:off + 512]))

def fix_header(b):
    b[512 + 36:512 + 40] = bytes(4)
    b[512 + 36:512 + 40] = struct.pack('>I', csum(b[512:1536]))

def out(name, b):
    open(f'{d}/{name}.vhd', 'wb').write(bytes(b))

def footer(name, src, field, fmt, v, both=True):
    b = bytearray(src)
    for off in ([0, len(b) - 512] if both else [len(b) - 512]):
        struct.pack_into(fmt, b, off + field, v)
    fix_footers(b, both)
    out(name, b)

def header(name, src, field, fmt, v):
    b = bytearray(src)
    struct.pack_into(fmt, b, 512 + field, v)
    fix_header(b)
    out(name, b)

def raw(name, src, off, data):
    b = bytearray(src)
    b[off:off + len(data)] = data
    out(name, b)

out('tiny', good[:300])
out('zeros', bytes(4096))
out('trunc-data', good[:3 << 20])
raw('bat-past-eof', good, 1536 + 4, struct.pack('>I', 0x7ffffff0))
raw('bat-into-header', good, 1536 + 4, struct.pack('>I', 1))
raw('bat-dup', good, 1536 + 4, good[1536:1540])
header('bat-short', good, 28, '>I', 1)
header('bs-zero', good, 32, '>I', 0)
header('bs-odd', good, 32, '>I', 3000)
header('table-overflow', good, 16, '>Q', 2**64 - 3)
b = bytearray(good)
struct.pack_into('>I', b, 512 + 28, 0xffffffff)
fix_header(b)
for off in (0, len(b) - 512):
    struct.pack_into('>Q', b, off + 48, 0xffffffff << 21)
fix_footers(b)
out('huge-count', b)
b = bytearray(good)
struct.pack_into('>I', b, 512 + 28, 0xffffffff)
fix_header(b)
for off in (0, len(b) - 512):
    struct.pack_into('>Q', b, off + 48, 1 << 62)
fix_footers(b)
out('huge-size', b)
# a size so close to 2^64 that rounding it up to blocks wraps to 0 (found by fuzz_vhd)
footer('wrap-size', good, 48, '>Q', 2**64 - (1 << 19))
footer('hdr-off', good, 16, '>Q', 1 << 40)
footer('type7', good, 60, '>I', 7)
footer('version9', good, 12, '>I', 0x00090000)
footer('fixed-trunc', fixed, 48, '>Q', 1 << 40, both=False)
raw('hdr-sum', good, 512 + 100, b'\x99')
raw('both-footers', good, 64, b'\xde\xad')
b = bytearray(good)
b[64:66] = b'\xde\xad'
b[len(b) - 512 + 64:len(b) - 512 + 66] = b'\xbe\xef'
out('both-footers', b)
# differencing child: locator data offset past EOF, and parent name emptied
b = bytearray(child)
loc = 512 + 576
struct.pack_into('>Q', b, loc + 16, 1 << 50)
struct.pack_into('>Q', b, loc + 24 + 16, 1 << 50)
b[512 + 64:512 + 576] = bytes(512)
fix_header(b)
out('loc-past-eof', b)
# locator length absurd
b = bytearray(child)
struct.pack_into('>I', b, loc + 8, 0xffffffff)
struct.pack_into('>I', b, loc + 24 + 8, 0xffffffff)
b[512 + 64:512 + 576] = bytes(512)
fix_header(b)
out('loc-huge', b)
PY

R() { keel convert -O raw "$B/$1.vhd" "$TMP/out.raw"; }
expect_err "truncated to 300 bytes" "tiny.vhd: file of 300 bytes is too small for a VHD" R tiny
expect_err "no VHD at all (forced -f vhd)" "zeros.vhd: not a VHD" keel info -f vhd "$B/zeros.vhd"
expect_err "truncated inside the data (end footer gone, copy used)" \
	"trunc-data.vhd: BAT entry 1 .* past" R trunc-data
expect_err "BAT entry past EOF" "bat-past-eof.vhd: BAT entry 1 .*points to file offset" R bat-past-eof
expect_err "BAT entry into the header" "bat-into-header.vhd: VHD .* overlaps" R bat-into-header
expect_err "two BAT entries, one block" "bat-dup.vhd: VHD block 0 at offset [0-9]* overlaps block 1" R bat-dup
expect_err "BAT smaller than the disk" "bat-short.vhd: .*BAT has only 1 entries" R bat-short
expect_err "zero block size" "bs-zero.vhd: VHD block size 0" R bs-zero
expect_err "block size not a power of two" "bs-odd.vhd: VHD block size 3000 .*not a power of two" R bs-odd
expect_err "BAT offset overflow bait" "table-overflow.vhd: BAT at offset 18446744073709551613" R table-overflow
expect_err "absurd BAT entry count" "huge-count.vhd: BAT at offset 1536 (4294967295 entries) extends past the end" R huge-count
expect_err "absurd virtual size" "huge-size.vhd: virtual size 4611686018427387904 needs" R huge-size
expect_err "virtual size that wraps when rounded up" "wrap-size.vhd: virtual size 18446744073709027328 needs" R wrap-size
expect_err "header offset outside the file" "hdr-off.vhd: dynamic disk header offset 1099511627776" R hdr-off
expect_err "unknown disk type" "type7.vhd: VHD disk type 7 is not supported" R type7
expect_err "unknown version" "version9.vhd: VHD file format version 9.0" R version9
expect_err "fixed disk larger than its file" "fixed-trunc.vhd: fixed VHD .*truncated" R fixed-trunc
expect_err "dynamic header checksum" "hdr-sum.vhd: VHD dynamic disk header checksum mismatch at offset 512" R hdr-sum
expect_err "both footer checksums bad" "both-footers.vhd: VHD footer checksum mismatch at offset" R both-footers
expect_err "locators past EOF, no name: parent cannot be found" \
	"loc-past-eof.vhd: parent not found: W2ru '': data lies past the end of the file" R loc-past-eof
expect_err "absurd locator length" "loc-huge.vhd: parent not found: .*data length is zero or larger than 64 KiB" R loc-huge
cp "$B/child.vhd" "$B/self.vhd"
keel create -f vhd -b self.vhd "$B/loop-child.vhd" >/dev/null
mv "$B/loop-child.vhd" "$B/self.vhd"
expect_err "parent loop (a child that is its own parent)" "self.vhd.*loops back" R self
# a child moved away from its parent: W2ru misses, W2ku (absolute) leaves the directory
mkdir -p "$B/moved"
cp "$B/child.vhd" "$B/moved/child.vhd"
expect_err "moved child: both locators named, the absolute one needs permission" \
	"moved/child.vhd: parent not found: W2ru '.\\\\good.vhd': $B/moved/good.vhd not found; W2ku '.*good.vhd': $B/good.vhd is outside the image's directory" \
	R moved/child
t "moved child: --allow-external-backing follows the absolute locator" \
	keel convert --allow-external-backing -O raw "$B/moved/child.vhd" "$TMP/moved.raw"
rm "$B/good.vhd"
expect_err "missing parent" "child.vhd: parent not found: W2ru '.\\\\good.vhd': $B/good.vhd not found" R child
expect_err "create: larger than VHD allows" "larger than the VHD maximum of 2040 GiB" \
	keel create -f vhd "$B/x.vhd" 3T
expect_err "create: bad block size" "block_size 3000 must be a power of two" \
	keel create -f vhd -o block_size=3000 "$B/x.vhd" 1G
expect_err "create: unknown option" "unknown option 'frob'" keel create -f vhd -o frob=1 "$B/x.vhd" 1G
expect_err "create: azure cannot be dynamic" "azure images are fixed" \
	keel create -f vhd -o azure,subformat=dynamic "$B/x.vhd" 1G
finish
