#!/usr/bin/env bash
# qcow2 bad input: damaged or hostile images give "keel: error: ..." naming
# the file and what is wrong; never a crash, a hang or silently wrong data.
# Images are made by keel itself, then patched. Run it against the
# sanitizer build too: KEEL=build-san/keel.
. "$(dirname "$0")/lib.sh"
cd "$TMP" || exit 1

# patch FILE CODE: run python CODE with the image open as f and helpers
# u32/u64 (read big-endian), w8/w32/w64 (write big-endian).
patch() {
	python3 - "$@" <<'PY'
import struct, sys, zlib
f = open(sys.argv[1], 'r+b')
def u32(o): f.seek(o); return struct.unpack('>I', f.read(4))[0]
def u64(o): f.seek(o); return struct.unpack('>Q', f.read(8))[0]
def w8(o, v): f.seek(o); f.write(bytes([v]))
def w32(o, v): f.seek(o); f.write(struct.pack('>I', v))
def w64(o, v): f.seek(o); f.write(struct.pack('>Q', v))
def wb(o, b): f.seek(o); f.write(b)
def fde():  # offset of the LUKS header (encryption header extension)
    p = u32(100)
    while u32(p) != 0x0537BE77: p += 8 + (u32(p + 4) + 7) // 8 * 8
    return u64(p + 8)
def l2_of(guest=0):
    cb = u32(20); l1 = u64(40)
    return u64(l1 + 8 * (guest >> (2 * cb - 3))) & 0x00fffffffffffe00
exec(sys.argv[2])
PY
}
# fresh NAME [create options]: a 1 MiB image with data in its first cluster
fresh() {
	local n=$1; shift
	"$KEEL" -q create -f qcow2 "$@" "$n" 1M >/dev/null &&
		"$KEEL" -q io -c "write -P 0x5a 0 64k" "$n" >/dev/null
}
rd() { keel -q convert -O raw "$1" "$1.out.raw"; }

fresh good.qcow2
t "a fresh image reads" rd good.qcow2

head -c 50 good.qcow2 >trunc.qcow2
expect_err "truncated header" "trunc.qcow2: file is 50 bytes, too short" keel info trunc.qcow2
head -c 70000 good.qcow2 >trunc2.qcow2
expect_err "truncated after the header: tables past EOF" "trunc2.qcow2.*past" keel info trunc2.qcow2

cp good.qcow2 bits.qcow2; patch bits.qcow2 'w32(20, 8)'
expect_err "cluster_bits 8" "bits.qcow2: cluster_bits 8 at offset 20 is outside 9..21" keel info bits.qcow2
patch bits.qcow2 'w32(20, 22)'
expect_err "cluster_bits 22" "bits.qcow2: cluster_bits 22" keel info bits.qcow2
patch bits.qcow2 'w32(20, 0xffffffff)'
expect_err "cluster_bits 2^32-1" "bits.qcow2: cluster_bits 4294967295" keel info bits.qcow2

cp good.qcow2 ver.qcow2; patch ver.qcow2 'w32(4, 1)'
expect_err "qcow version 1" "ver.qcow2: qcow version 1" keel info ver.qcow2
patch ver.qcow2 'w32(4, 4)'
expect_err "version 4" "ver.qcow2: qcow2 version 4 is not supported" keel info ver.qcow2

cp good.qcow2 hl.qcow2; patch hl.qcow2 'w32(100, 101)'
expect_err "header_length not a multiple of 8" "hl.qcow2: header_length 101" keel info hl.qcow2
cp good.qcow2 ro.qcow2; patch ro.qcow2 'w32(96, 7)'
expect_err "refcount_order 7" "ro.qcow2: refcount_order 7" keel info ro.qcow2

cp good.qcow2 l1eof.qcow2; patch l1eof.qcow2 'w64(40, 1 << 40)'
expect_err "L1 table offset past EOF" "l1eof.qcow2: L1 table at 1099511627776.*past the end of the file" keel info l1eof.qcow2
cp good.qcow2 l1big.qcow2; patch l1big.qcow2 'w32(36, 0xffffffff)'
expect_err "absurd L1 size (overflow bait)" "l1big.qcow2: L1 table has 4294967295 entries, more than" keel info l1big.qcow2
cp good.qcow2 l1file.qcow2; patch l1file.qcow2 'w32(36, 4 << 20)'
expect_err "L1 size capped against the file" "l1file.qcow2: L1 table.*past the end of the file" keel info l1file.qcow2
cp good.qcow2 l1small.qcow2; patch l1small.qcow2 'w64(24, 1 << 50)'
expect_err "virtual size larger than the L1 table maps" "l1small.qcow2: L1 table has 1 entries but the virtual size" keel info l1small.qcow2
cp good.qcow2 l1mis.qcow2; patch l1mis.qcow2 'w64(40, u64(40) + 8)'
expect_err "misaligned L1 table" "l1mis.qcow2: L1 table offset .* not a cluster-aligned" keel info l1mis.qcow2

cp good.qcow2 rteof.qcow2; patch rteof.qcow2 'w64(48, 1 << 40)'
expect_err "refcount table past EOF" "rteof.qcow2: refcount table at .*past the end of the file" keel info rteof.qcow2
cp good.qcow2 rtbig.qcow2; patch rtbig.qcow2 'w32(56, 0x7fffffff)'
expect_err "absurd refcount table size" "rtbig.qcow2: refcount table of 2147483647 clusters" keel info rtbig.qcow2
cp good.qcow2 rbeof.qcow2; patch rbeof.qcow2 'w64(u64(48), 1 << 40)'
expect_err "refcount block past EOF: check" "rbeof.qcow2: refcount block at offset 1099511627776.*past end of file" keel check rbeof.qcow2
expect_err "refcount block past EOF: write" "rbeof.qcow2: refcount block at offset 1099511627776" keel io -c "write 128k 64k" rbeof.qcow2

cp good.qcow2 overlap.qcow2; patch overlap.qcow2 'w64(40, u64(48))'
expect_err "L1 table overlapping the refcount table" "overlap.qcow2: L1 table at 65536 overlaps the refcount table" keel info overlap.qcow2
cp good.qcow2 l2hdr.qcow2; patch l2hdr.qcow2 'w64(u64(40), 0 | (1 << 63) | 512)'
expect_err "L2 table inside the header" "l2hdr.qcow2: L2 table offset 512" rd l2hdr.qcow2
cp good.qcow2 l2rt.qcow2; patch l2rt.qcow2 'w64(u64(40), u64(48) | (1 << 63))'
expect_err "L2 table on top of the refcount table: write refused" "l2rt.qcow2: L2 table at 65536 (L1 entry 0) overlaps other metadata" keel io -c "write -P 1 0 4k" l2rt.qcow2
t "...and the refcount table is intact" sh -c "'$KEEL' check --output json l2rt.qcow2 | grep -q '\"filename\"'"

cp good.qcow2 l2eof.qcow2; patch l2eof.qcow2 'w64(u64(40), (1 << 40) | (1 << 63))'
expect_err "L2 table past EOF" "l2eof.qcow2: L2 table at offset 1099511627776.*past end of file" rd l2eof.qcow2
cp good.qcow2 deof.qcow2; patch deof.qcow2 'w64(l2_of(), (1 << 40) | (1 << 63))'
expect_err "data cluster past EOF" "deof.qcow2: data of guest offset 0 at host offset 1099511627776 lies past the end" rd deof.qcow2
cp deof.qcow2 deof2.qcow2
expect_err "write into a data cluster past EOF is refused" "deof2.qcow2: data cluster of guest offset 0 at host 1099511627776 lies past the end" keel io -c "write 0 4k" deof2.qcow2
t "...and the file did not grow" sh -c "[ \$(stat -c %s deof2.qcow2) -lt 1048576 ]"
cp good.qcow2 dmis.qcow2; patch dmis.qcow2 'w64(l2_of(), u64(l2_of()) + 4096)'
expect_err "misaligned data cluster" "dmis.qcow2: L2 table at .* entry 0: cluster offset .* not cluster aligned" rd dmis.qcow2

# compressed clusters that lie
keel -q convert -c -O qcow2 good.qcow2 comp.qcow2 >/dev/null
cp comp.qcow2 infl.qcow2
patch infl.qcow2 '
e = u64(l2_of()); cb = u32(20); shift = 62 - (cb - 8)
off = e & ((1 << shift) - 1); n = ((e >> shift) & ((1 << (cb - 8)) - 1)) + 1
room = n * 512 - (off & 511)
c = zlib.compressobj(9, zlib.DEFLATED, -12)
z = c.compress(bytes(3 << 16)) + c.flush()
assert len(z) <= room, (len(z), room)
wb(off, z)'
expect_err "compressed data inflating past the cluster" "infl.qcow2: compressed cluster at .* inflates past the cluster size 65536" rd infl.qcow2
cp comp.qcow2 short.qcow2
patch short.qcow2 '
e = u64(l2_of()); off = e & ((1 << 54) - 1)
c = zlib.compressobj(9, zlib.DEFLATED, -12)
wb(off, c.compress(bytes(1000)) + c.flush())'
expect_err "compressed data too short" "short.qcow2: compressed cluster at .* corrupt or short" rd short.qcow2
cp comp.qcow2 garbage.qcow2
patch garbage.qcow2 'e = u64(l2_of()); wb(e & ((1 << 54) - 1), b"\xff" * 64)'
expect_err "compressed garbage" "garbage.qcow2: compressed cluster at" rd garbage.qcow2
keel -q convert -c -O qcow2 -o compression_type=zstd good.qcow2 zcomp.qcow2 >/dev/null
cp zcomp.qcow2 zgarb.qcow2
patch zgarb.qcow2 'e = u64(l2_of()); wb(e & ((1 << 54) - 1), b"\x28\xb5\x2f\xfd" + b"\xff" * 60)'
expect_err "zstd garbage" "zgarb.qcow2: compressed cluster at .*zstd" rd zgarb.qcow2
cp comp.qcow2 ctype.qcow2; patch ctype.qcow2 'w8(104, 1)'
expect_err "compression type without its feature bit" "ctype.qcow2: compression type 1 at offset 104 without" keel info ctype.qcow2
cp comp.qcow2 ctype2.qcow2; patch ctype2.qcow2 'w8(104, 7); w64(72, 8)'
expect_err "unknown compression type" "ctype2.qcow2: unknown compression type 7" keel info ctype2.qcow2

# feature bits
cp good.qcow2 incompat.qcow2; patch incompat.qcow2 'w64(72, 1 << 7)'
expect_err "unknown incompatible bit" "incompat.qcow2: unsupported incompatible feature bit 7" keel info incompat.qcow2
cp good.qcow2 named.qcow2
patch named.qcow2 '
p = u32(100)
while u32(p) != 0x6803F857: p += 8 + (u32(p + 4) + 7) // 8 * 8
wb(p + 8, bytes([0, 9]) + b"future widget".ljust(46, b"\0")); w64(72, 1 << 9)'
expect_err "unknown bit named from the feature table" "named.qcow2: unsupported incompatible feature bit 9 ('future widget')" keel info named.qcow2
cp good.qcow2 enc.qcow2; patch enc.qcow2 'w32(32, 2)'
expect_err "LUKS without its header extension" "enc.qcow2: LUKS header area of 0 bytes at 0 (from extension 0x0537be77) is missing" keel info enc.qcow2
cp good.qcow2 aes.qcow2; patch aes.qcow2 'w32(32, 1)'
expect_err "legacy AES encryption" "aes.qcow2: encrypted qcow2 (crypt_method 1, legacy AES) is not supported" keel info aes.qcow2
cp good.qcow2 enc3.qcow2; patch enc3.qcow2 'w32(32, 3)'
expect_err "unknown encryption method" "enc3.qcow2: unknown encryption method 3 at offset 32" keel info enc3.qcow2
if command -v qemu-img >/dev/null; then
	# LUKS: a real header from qemu-img, then damaged field by field
	printf 'pw' >pw
	retry_pbkdf2 luks.qcow2 qemu-img create -q -f qcow2 --object secret,id=s0,file=pw \
		-o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=@IT@ luks.qcow2 1M ||
		bad "LUKS: qemu-img create failed 8 times"
	qemu-io --object secret,id=s0,file=pw --image-opts -c "write -P 0x5a 0 64k" \
		driver=qcow2,file.filename=luks.qcow2,encrypt.key-secret=s0 >/dev/null
	t "LUKS: reads with the passphrase" keel io --key-file pw -c "read -P 0x5a 0 64k" luks.qcow2
	luks_bad() { # luks_bad NAME PATCH MESSAGE
		cp luks.qcow2 "$1.qcow2"; patch "$1.qcow2" "$2"
		expect_err "LUKS: $1" "$1.qcow2: $3" keel io --key-file pw -c "read 0 64k" "$1.qcow2"
	}
	luks_bad lmagic 'wb(fde(), b"LUKX")' "no LUKS header (magic)"
	luks_bad lversion 'wb(fde() + 6, b"\0\2")' "LUKS version 2; keel reads version 1"
	luks_bad lcipher 'wb(fde() + 8, b"serpent\0")' "LUKS cipher 'serpent' is not supported"
	luks_bad lnonul 'wb(fde() + 8, b"a" * 32)' "LUKS header: cipher name is not NUL-terminated"
	luks_bad lmode 'wb(fde() + 40, b"xts-benbi\0")' "LUKS IV generator 'benbi' is not supported"
	luks_bad lhash 'wb(fde() + 72, b"nohash\0")' "LUKS hash 'nohash' is not known"
	luks_bad lkeybytes 'w32(fde() + 108, 0)' "LUKS header: 0 key bytes"
	luks_bad lkeybytes2 'w32(fde() + 108, 48)' "LUKS header: 48 key bytes do not fit aes-xts-plain64"
	luks_bad lmkiter 'w32(fde() + 164, 0xffffffff)' "LUKS header: master key digest iterations 4294967295"
	luks_bad lstate 'w32(fde() + 208, 0x12345678)' "LUKS key slot 0: state 0x12345678"
	luks_bad liter 'w32(fde() + 212, 0xffffffff)' "LUKS key slot 0: iterations 4294967295"
	luks_bad lstripes 'w32(fde() + 252, 0xffffffff)' "LUKS key slot 0: iterations [0-9]*, 4294967295 stripes"
	luks_bad lmaterial 'w32(fde() + 248, 0x7fffffff)' "LUKS key slot 0: .* stripes at sector 2147483647 do not fit"
	luks_bad lnoslot 'w32(fde() + 208, 0xdead)' "LUKS header has no active key slot"
	luks_bad ldigest 'wb(fde() + 112, bytes(20))' "wrong passphrase: no LUKS key slot opens with it"
	luks_bad larea 'p = u32(100)
while u32(p) != 0x0537BE77: p += 8 + (u32(p + 4) + 7) // 8 * 8
w64(p + 16, 1 << 40)' "LUKS header area of 1099511627776 bytes"
	luks_bad lcomp 'w64(l2_of(), (1 << 62) | u64(l2_of()) & 0xffffffffffff)' "L2 table at [0-9]* entry 0: compressed cluster in an image with encryption"
	expect_err "LUKS: no passphrase" "luks.qcow2 is encrypted (LUKS): a passphrase is needed" keel convert -O raw luks.qcow2 luks.raw </dev/null
	t "LUKS: damaged copies left the original readable" keel io --key-file pw -c "read -P 0x5a 0 64k" luks.qcow2
fi
cp good.qcow2 corrupt.qcow2; patch corrupt.qcow2 'w64(72, 2)'
t "corrupt bit: readable" rd corrupt.qcow2
t "corrupt bit: info says so" sh -c "'$KEEL' info corrupt.qcow2 | grep -q 'corrupt: yes'"
expect_err "corrupt bit: no writable open" "corrupt.qcow2: image is marked corrupt" keel io -c "write 0 4k" corrupt.qcow2
if command -v qemu-img >/dev/null; then
	# external data file: read, never written; its name and L2 entries checked
	qemu-img create -q -f qcow2 -o data_file=datafile.raw ext.qcow2 1M
	qemu-io -c "write -P 0x5a 0 64k" -c "write -P 0x5b 128k 64k" ext.qcow2 >/dev/null
	t "external data file: readable" rd ext.qcow2
	expect_err "external data file: no writable open" "ext.qcow2: guest data lives in the external data file 'datafile.raw'; keel reads such images but does not write them" keel io -c "write 0 4k" ext.qcow2
	cp ext.qcow2 extgone.qcow2; patch extgone.qcow2 '
p = u32(100)
while u32(p) != 0x44415441: p += 8 + (u32(p + 4) + 7) // 8 * 8
wb(p + 8, b"nothere.raw!")'
	expect_err "external data file: missing" "extgone.qcow2: 'nothere.raw!' not found" keel info extgone.qcow2
	cp ext.qcow2 extnul.qcow2; patch extnul.qcow2 '
p = u32(100)
while u32(p) != 0x44415441: p += 8 + (u32(p + 4) + 7) // 8 * 8
wb(p + 10, b"\0")'
	expect_err "external data file: NUL in its name" "extnul.qcow2: data file name extension at offset [0-9]*: 12 bytes with a NUL byte" keel info extnul.qcow2
	cp ext.qcow2 extmoved.qcow2; patch extmoved.qcow2 'w64(l2_of(), u64(l2_of()) + 65536)'
	expect_err "external data file: cluster not at its guest offset" "extmoved.qcow2: guest offset 0 maps to offset 65536 of the external data file" rd extmoved.qcow2
	t "external data file: check finds the moved cluster" sh -c "! '$KEEL' check extmoved.qcow2 >ck.out 2>&1; grep -q 'data cluster of guest offset 0 at data file offset 65536' ck.out"
	cp ext.qcow2 extcomp.qcow2; patch extcomp.qcow2 'w64(l2_of(), (1 << 62) | 65536)'
	expect_err "external data file: compressed cluster" "extcomp.qcow2: L2 table at [0-9]* entry 0: compressed cluster in an image with an external data file" rd extcomp.qcow2
	# a snapshot first (qemu-img takes none with a data file), then the data file added
	qemu-img create -q -f qcow2 extsnap.qcow2 1M; qemu-img snapshot -c s1 extsnap.qcow2
	patch extsnap.qcow2 '
p = u32(100)
while u32(p) != 0: p += 8 + (u32(p + 4) + 7) // 8 * 8
w32(p, 0x44415441); w32(p + 4, 12); wb(p + 8, b"datafile.raw\0\0\0\0"); wb(p + 24, bytes(8))
w64(72, u64(72) | 4)'
	expect_err "external data file: snapshots" "extsnap.qcow2: 1 internal snapshots in an image with an external data file" keel info extsnap.qcow2
	cp ext.qcow2 extnoname.qcow2; patch extnoname.qcow2 '
p = u32(100)
while u32(p) != 0x44415441: p += 8 + (u32(p + 4) + 7) // 8 * 8
w32(p, 0x12345678)'
	expect_err "external data file: bit without a name" "extnoname.qcow2: external data file bit set (incompatible bit 2) but no data file name extension" keel info extnoname.qcow2
fi
cp good.qcow2 v2zero.qcow2; keel -q convert -O qcow2 -o compat=0.10 good.qcow2 v2zero.qcow2
patch v2zero.qcow2 'w64(l2_of(), u64(l2_of()) | 1)'
expect_err "zero flag in a v2 image" "v2zero.qcow2: L2 table at .* entry 0: zero flag in a version 2 image" rd v2zero.qcow2
keel -q create -f qcow2 -o extended_l2=on xl2.qcow2 1M
keel -q io -c "write 0 64k" xl2.qcow2
cp xl2.qcow2 xl2bad.qcow2; patch xl2bad.qcow2 'w64(l2_of() + 8, 0x00000001_00000001)'
expect_err "subcluster both allocated and zero" "xl2bad.qcow2: L2 table at .* both allocated and zero" rd xl2bad.qcow2

# snapshot table
cp good.qcow2 snap.qcow2; patch snap.qcow2 'w32(60, 1); w64(64, 1 << 40)'
expect_err "snapshot table past EOF" "snap.qcow2: snapshot table offset 1099511627776" keel info snap.qcow2
cp good.qcow2 snap2.qcow2; patch snap2.qcow2 'w32(60, 0xffffffff); w64(64, 65536 * 4)'
expect_err "absurd snapshot count" "snap2.qcow2: 4294967295 snapshots" keel info snap2.qcow2
cp good.qcow2 snap3.qcow2; size=$(stat -c %s snap3.qcow2); truncate -s $((size + 4096)) snap3.qcow2
patch snap3.qcow2 "w32(60, 1000); w64(64, $size)"
expect_err "snapshot entries running past EOF" "snap3.qcow2: snapshot .* runs past the end" keel info snap3.qcow2

# a snapshot whose recorded virtual size its L1 table does not cover:
# reverting would make that the image's size
cp good.qcow2 snapsz.qcow2; keel -q snapshot -c s1 snapsz.qcow2
patch snapsz.qcow2 'w64(u64(64) + 48, 1 << 40)'   # extra data: VM state size, then disk size
sum=$(sha256sum <snapsz.qcow2)
expect_err "revert to a snapshot larger than its L1 table covers" \
	"snapsz.qcow2: snapshot 's1' (id 1) has a virtual size of 1099511627776 but its L1 table of 1 entries" \
	keel snapshot -a s1 snapsz.qcow2
t "...and the file is untouched" test "$sum" = "$(sha256sum <snapsz.qcow2)"

# backing chains
cp good.qcow2 bname.qcow2; patch bname.qcow2 'w64(8, 1 << 20); w32(16, 10)'
expect_err "backing name outside the header cluster" "bname.qcow2: backing file name at offset 1048576" keel info bname.qcow2
keel -q create -f qcow2 a.qcow2 1M
keel -q create -f qcow2 -b a.qcow2 b.qcow2
keel -q create -f qcow2 -b b.qcow2 a2.qcow2 && mv a2.qcow2 a.qcow2
expect_err "backing loop a -> b -> a" "a.qcow2.*loops back" rd a.qcow2
keel -q create -f qcow2 gone.qcow2 1M
keel -q create -f qcow2 -b gone.qcow2 orphan.qcow2 && rm gone.qcow2
expect_err "missing backing file" "orphan.qcow2.*'gone.qcow2' not found" rd orphan.qcow2
t "info without the parent still works" keel info --no-parent orphan.qcow2
mkdir -p inner outer
keel -q create -f qcow2 outer/base.qcow2 1M
keel -q create -f qcow2 --allow-external-backing -b ../outer/base.qcow2 inner/esc.qcow2
expect_err "backing file outside the directory" "inner/esc.qcow2.*outside the image's directory.*allow-external-backing" rd inner/esc.qcow2
t "...accepted with --allow-external-backing" keel -q convert --allow-external-backing -O raw inner/esc.qcow2 esc.raw

# A header whose L1 offset was damaged to another cluster inside the file:
# the real L1, L2 and data clusters are no longer reached and show up as
# leaks. -r must not free them (they are the data), and it must not call
# the image clean. Once the header is put right, everything reads again.
fresh l1moved.qcow2
"$KEEL" -q io -c 'write -P 0x33 128k 64k' l1moved.qcow2
l1=$(python3 -c "import struct; f=open('l1moved.qcow2','rb'); f.seek(40); print(struct.unpack('>Q', f.read(8))[0])")
rb=$(python3 -c "import struct; f=open('l1moved.qcow2','rb'); f.seek(48); rt=struct.unpack('>Q', f.read(8))[0]; f.seek(rt); print(struct.unpack('>Q', f.read(8))[0])")
patch l1moved.qcow2 "w64(40, $rb)"   # the L1 now reads the refcount block
sum=$(sha256sum <l1moved.qcow2)
expect_rc 3 "L1 offset on the refcount block: -r all exits 3" keel check -r all l1moved.qcow2
t "...says nothing was repaired, and why" grep -q "nothing repaired: [0-9]* error(s) in the table structure" <("$KEEL" check -r all l1moved.qcow2 2>&1)
t "...and did not touch the file (the leaked clusters are the data)" test "$sum" = "$(sha256sum <l1moved.qcow2)"
patch l1moved.qcow2 "w64(40, $l1)"
t "...which reads back once the header is fixed" keel -q io -c 'read -P 0x5a 0 64k' -c 'read -P 0x33 128k 64k' l1moved.qcow2
t "...and checks clean" keel check l1moved.qcow2

# A refcount table entry damaged to name a data cluster as a refcount
# block: "referenced twice, counted once" is not a count to raise (that
# was -r all's old answer, after which qemu-img check still saw the error)
fresh rtdup.qcow2
patch rtdup.qcow2 "w64(u64(48) + 8 * 5, l2_of(0) + 0)"   # entry 5 -> the L2 table
sum=$(sha256sum <rtdup.qcow2)
expect_rc 3 "refcount table entry on the L2 table: exits 3" keel check -r all rtdup.qcow2
t "...as a cluster used twice" grep -q "cluster [0-9]* is used twice: as refcount block, and already as an L2 table" <("$KEEL" check rtdup.qcow2)
t "...and -r all left the file alone" test "$sum" = "$(sha256sum <rtdup.qcow2)"
finish
