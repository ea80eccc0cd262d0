#!/usr/bin/env bash
# VHDX bad input through the CLI: every case must end in "keel: error:"
# naming the file and the problem, never a crash, hang or huge allocation
# (run with KEEL=build-san/keel under ASan/UBSan). Images are made by keel;
# fields are patched and their CRC-32C recomputed so each case reaches the
# check it is aimed at. Layout of keel's files: headers at 64 KiB and
# 128 KiB, region tables at 192 KiB and 256 KiB, log at 1 MiB, metadata at
# 2 MiB (items from 2 MiB + 64 KiB), BAT at 3 MiB, payload from 4 MiB.
. "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null 2>&1 || skip "python3 not installed"

MiB=1048576
H1=65536 H2=131072 RT1=196608 RT2=262144 LOG=$MiB META=$((2 * MiB)) BAT=$((3 * MiB))
ITEMS=$((META + 65536))

# vpatch FILE OFFSET FMT VALUE [CRC_OFF CRC_LEN]: write struct.pack("<FMT",
# VALUE) at OFFSET, then recompute the CRC-32C of [CRC_OFF, +CRC_LEN).
vpatch() {
	python3 - "$@" <<'PY'
import struct, sys
path, off, fmt, val = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
with open(path, 'r+b') as f:
    f.seek(off)
    f.write(bytes.fromhex(val) if fmt == 'hex' else struct.pack('<' + fmt, int(val, 0)))
    if len(sys.argv) > 5:
        co, cl = int(sys.argv[5]), int(sys.argv[6])
        f.seek(co); b = bytearray(f.read(cl)); b[4:8] = bytes(4)
        f.seek(co + 4); f.write(struct.pack('<I', crc32c(b)))
PY
}
# patch the same header field in both headers, keeping their CRCs valid
hpatch() { vpatch "$1" $((H1 + $2)) "$3" "$4" $H1 4096; vpatch "$1" $((H2 + $2)) "$3" "$4" $H2 4096; }
# patch the same region table field in both copies
rpatch() { vpatch "$1" $((RT1 + $2)) "$3" "$4" $RT1 65536; vpatch "$1" $((RT2 + $2)) "$3" "$4" $RT2 65536; }

good="$TMP/good.vhdx"
keel -q create -f vhdx -o block_size=1M "$good" 8M >/dev/null
keel -q io -c "write -P 0x61 0 3M" "$good" >/dev/null
t "the unpatched image opens" keel info "$good"
b="$TMP/bad.vhdx"
fresh() { cp --sparse=always "$good" "$b"; }
info() { timeout 60 "$KEEL" info "$b"; }
readall() { timeout 60 "$KEEL" convert -O raw "$b" "$TMP/out.raw"; }

fresh; truncate -s 500000 "$b"
expect_err "truncated below the header section" "bad.vhdx.*too short" info
fresh; truncate -s $((4 * MiB + 4096)) "$b"
expect_err "truncated in the payload: BAT entry past EOF" "bad.vhdx.*past the end of the file" info
fresh; vpatch "$b" $((H1 + 200)) B 1; vpatch "$b" $((H2 + 200)) B 1
expect_err "both headers bad" "bad.vhdx: no valid VHDX header" info
fresh; hpatch "$b" 66 H 2
expect_err "header version 2" "bad.vhdx: no valid VHDX header.*version" info
fresh; rpatch "$b" 32 Q $((1 << 40))
expect_err "region past EOF" "bad.vhdx: region table.*inside the file" info
fresh; rpatch "$b" 64 Q $BAT
expect_err "regions overlapping" "bad.vhdx: BAT region.*overlaps the metadata region" info
fresh; rpatch "$b" 40 I $((2 * MiB))
expect_err "region overlapping the payload" "bad.vhdx.*overlaps" info
fresh; rpatch "$b" 8 I 4000
expect_err "absurd region count" "bad.vhdx: no valid region table" info
fresh; rpatch "$b" 16 hex 00112233445566778899aabbccddeeff
expect_err "unknown required region" "bad.vhdx.*unknown required region" info
fresh; vpatch "$b" $BAT Q $(((1 << 40) | 6))
expect_err "BAT entry past EOF" "bad.vhdx: BAT entry 0.*past the end of the file" info
fresh; vpatch "$b" $((BAT + 8)) Q $(((4 << 20) | 6))
expect_err "BAT entries overlapping" "bad.vhdx: BAT entry 1.*overlaps" info
fresh; vpatch "$b" $((BAT + 8)) Q $(((2 << 20) | 6))
expect_err "BAT entry inside the metadata region" "bad.vhdx: BAT entry 1.*overlaps" info
fresh; vpatch "$b" $((BAT + 16)) Q 4
expect_err "reserved BAT state" "bad.vhdx: BAT entry 2.*reserved state" info
fresh; vpatch "$b" $ITEMS I $((0x80000000))
expect_err "absurd block size" "bad.vhdx: block size 2147483648" info
fresh; vpatch "$b" $ITEMS I 0
expect_err "zero block size" "bad.vhdx: block size 0" info
fresh; vpatch "$b" $((ITEMS + 8)) Q $((1 << 62))
expect_err "absurd virtual size" "bad.vhdx: virtual disk size" info
fresh; vpatch "$b" $((ITEMS + 8)) Q 0
expect_err "zero virtual size" "bad.vhdx: virtual disk size 0" info
fresh; vpatch "$b" $((ITEMS + 8)) Q $((64 << 40))
expect_err "64 TiB in 1 MiB blocks: BAT capped by the region" "bad.vhdx: BAT region.*too small\|BAT region.*holds" info
fresh; vpatch "$b" $((ITEMS + 32)) I 4096; vpatch "$b" $((ITEMS + 8)) Q $((40 << 40))
expect_err "chunk ratio 32768 over 40 TiB: BAT capped" "bad.vhdx: BAT region" info
fresh; vpatch "$b" $((ITEMS + 32)) I 0
expect_err "zero sector size" "bad.vhdx: logical sector size 0" info
fresh; vpatch "$b" $META hex 00
expect_err "metadata signature" "bad.vhdx: no 'metadata' signature" info
fresh; vpatch "$b" $((META + 10)) H 65535
expect_err "absurd metadata entry count" "bad.vhdx: metadata table.*more than 2047" info
fresh; vpatch "$b" $((META + 32 + 20)) I $((2 * MiB))
expect_err "metadata item longer than 1 MiB" "bad.vhdx: metadata entry 0" info
fresh; vpatch "$b" $((ITEMS + 4)) I 2
expect_err "HasParent without a locator" "bad.vhdx: differencing disk.*without a parent locator" info
fresh; hpatch "$b" 48 hex 0123456789abcdef0123456789abcdef
expect_err "log with nothing valid in it" "bad.vhdx: LogGuid.*no valid entry sequence" info
fresh; python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek($LOG); f.write(bytes([0x6c,0x6f,0x67,0x65])+bytes(range(256))*4000)" "$b"
hpatch "$b" 48 hex 0123456789abcdef0123456789abcdef
cp "$b" "$TMP/before.vhdx"
expect_err "log with garbage" "bad.vhdx: LogGuid.*no valid entry sequence" info
t "a read-only open of a file with a log wrote nothing" cmp "$b" "$TMP/before.vhdx"
expect_err "a writable open refuses it too, unchanged" "bad.vhdx: LogGuid" \
	timeout 60 "$KEEL" io -c "write 0 4k" "$b"
t "... and wrote nothing" cmp "$b" "$TMP/before.vhdx"
fresh; hpatch "$b" 48 hex 0123456789abcdef0123456789abcdef; hpatch "$b" 72 Q $((1 << 45))
expect_err "log past EOF" "bad.vhdx: the header's log" info
fresh; hpatch "$b" 48 hex 0123456789abcdef0123456789abcdef; hpatch "$b" 72 Q $BAT
expect_err "log overlapping the BAT" "bad.vhdx: \(the log.*overlaps\|LogGuid.*no valid entry\)" info
fresh; hpatch "$b" 48 hex 0123456789abcdef0123456789abcdef; hpatch "$b" 64 H 7
expect_err "unknown log version" "bad.vhdx: VHDX log version 7" info

# ------------------------------------------------ parents
keel -q create -f vhdx -b good.vhdx "$TMP/kid.vhdx" >/dev/null
keel -q create -f vhdx -b kid.vhdx "$TMP/grandkid.vhdx" >/dev/null
t "a chain of three opens" keel info "$TMP/grandkid.vhdx"
cp "$TMP/grandkid.vhdx" "$TMP/loop.vhdx"
keel -q create -f vhdx -b loop.vhdx "$TMP/loop2.vhdx" >/dev/null
cp "$TMP/loop2.vhdx" "$TMP/loop.vhdx" # loop.vhdx -> loop.vhdx
# keel info shows a child without its chain (with a warning); reading needs the chain
R() { timeout 60 "$KEEL" convert -O raw "$1" "$TMP/out.raw"; }
expect_err "parent loop (self)" "loop.vhdx.*loops back" R "$TMP/loop.vhdx"
cp "$TMP/grandkid.vhdx" "$TMP/good.vhdx.tmp"
cp "$good" "$TMP/good.save"
cp "$TMP/good.vhdx.tmp" "$good" # good -> kid -> good
expect_err "parent loop (two images)" "loops back" R "$TMP/kid.vhdx"
cp "$TMP/good.save" "$good"
mv "$good" "$TMP/moved.vhdx"
expect_err "missing parent" "kid.vhdx: parent VHDX not found.*relative_path 'good.vhdx'" \
	R "$TMP/kid.vhdx"
t "info still shows the child of a missing parent" keel info "$TMP/kid.vhdx"
mv "$TMP/moved.vhdx" "$good"
keel -q io -c "write -P 0x62 0 512" "$good" >/dev/null
expect_err "parent changed after the child was made" "kid.vhdx: wrong parent.*parent_linkage" \
	R "$TMP/kid.vhdx"
cp "$TMP/kid.vhdx" "$b"
vpatch "$b" $((ITEMS + 64)) hex 00
expect_err "parent locator of another type" "bad.vhdx: parent locator.*not a VHDX parent" info
cp "$TMP/kid.vhdx" "$b"
vpatch "$b" $((ITEMS + 64 + 18)) H 5000
expect_err "parent locator entry count past the item" "bad.vhdx: parent locator.*do not fit" info
cp "$TMP/kid.vhdx" "$b"
vpatch "$b" $((ITEMS + 64 + 20)) I $((1 << 30))
expect_err "parent locator key outside the item" "bad.vhdx: parent locator.*outside" info
cp "$TMP/kid.vhdx" "$b"
expect_err "writing a differencing disk whose parent is stale" "wrong parent" \
	timeout 60 "$KEEL" io -c "write 0 4k" "$b"
finish
