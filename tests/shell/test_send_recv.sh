#!/usr/bin/env bash
# keel send / keel recv through the CLI: full and incremental streams, keys,
# the base check, an interrupted receive resumed from the token keel info
# prints, tokens refused by the sender, damaged streams refused with the
# target left as it was, raw stores (no plaintext, restore with the key).
. "$(dirname "$0")/lib.sh"
ST="python3 $(cd "$(dirname "$0")" && pwd)/streamtool.py"
cd "$TMP"
printf 'stream passphrase\n' > pass
printf 'another passphrase\n' > other
export KEEL_PASS="stream passphrase"

# a source with three snapshots: data, text, zero runs and holes
pattern_file src.raw $((24 * 1024 * 1024))
keel -q convert -O keel -o cluster_size=64K src.raw src.keel
keel -q snapshot create src.keel s1
keel -q io -c 'write -P 0x5a 1M 192K' -c 'write -z 3M 128K' -c 'write -P 0x33 20M 64K' src.keel
keel -q snapshot create src.keel s2
keel -q io -c 'write -P 0x77 7M 1M' -c 'discard 10M 256K' src.keel
keel -q snapshot create src.keel s3

# ---- full, incremental
t "full stream to a file" keel -q send src.keel@s1 -o full.kst
t "no partial file left" test ! -e full.kst.partial
t "full receive makes the image" sh -c "'$KEEL' recv --output json -i full.kst dst.keel > r1.json"
t "json summary" python3 -c "import json; d=json.load(open('r1.json')); assert d['finished'] and d['created'] and not d['incremental'] and d['snapshot']=='s1'"
t "replica equals s1" keel compare src.keel@s1 dst.keel
t "incremental through a pipe" sh -c "'$KEEL' send -i s1 src.keel@s2 | '$KEEL' -q recv dst.keel"
t "replica equals s2" keel compare src.keel@s2 dst.keel
t "s1 is still there" keel compare src.keel@s1 dst.keel@s1
t "snapshot guids kept" sh -c "[ \"\$('$KEEL' snapshot list --output json dst.keel | python3 -c 'import json,sys; print([s[\"name\"] for s in json.load(sys.stdin)])')\" = \"['s1', 's2']\" ]"
t "incremental is small" sh -c "[ \$('$KEEL' send -i s1 src.keel@s2 | wc -c) -lt 200000 ]"
t "check clean" keel check dst.keel
expect_err "a base the target lacks is refused" "does not hold the stream's base" \
	sh -c "'$KEEL' send -i s2 src.keel@s3 > inc23.kst && cp full.kst f2.kst && rm -f d2.keel && '$KEEL' -q recv -i f2.kst d2.keel && '$KEEL' recv -i inc23.kst d2.keel"
t "and d2 kept only s1" keel compare src.keel@s1 d2.keel
keel -q send src.keel@s2 -o full2.kst
expect_err "a full stream into an image with snapshots" "already holds snapshots" keel recv -i full2.kst d2.keel
keel -q send -i s2 src.keel@s3 -o inc23.kst
cp dst.keel changed.keel
keel -q io -c 'write -P 0x01 0 4K' changed.keel
expect_err "a target changed since the base is refused" "changed since snapshot" keel recv -i inc23.kst changed.keel
t "--force discards the local change" keel -q recv --force -i inc23.kst changed.keel
t "and gets s3" keel compare src.keel@s3 changed.keel
t "verify only" keel -q recv --verify -i inc23.kst
t "full stream equals convert" sh -c "'$KEEL' -q convert -O raw dst.keel@s2 out.raw && '$KEEL' -q convert -O raw src.keel@s2 ref.raw && cmp out.raw ref.raw"

# ---- keys
t "keyed stream" keel -q send --key-file pass src.keel@s1 -o k1.kst
expect_err "no key" "encrypted" keel recv -i k1.kst k.keel
expect_err "wrong key" "authentication" keel recv --key-file other -i k1.kst k.keel
t "nothing made on failure" test ! -e k.keel
t "right key" keel -q recv --key-env KEEL_PASS -i k1.kst k.keel
t "keyed replica" keel compare src.keel@s1 k.keel
t "no plaintext run in a keyed stream" python3 - src.raw k1.kst <<'PY'
import sys
src, s = open(sys.argv[1], 'rb').read(), open(sys.argv[2], 'rb').read()
for off in range(0, len(src) - 64, 1 << 16):
    w = src[off:off + 64]
    if len(set(w)) > 1 and w in s:
        sys.exit("plaintext at %d" % off)
PY
# an encrypted source: the replica is created encrypted with the same passphrase
keel -q convert -O keel -o encrypt=on,cluster_size=64K --key-file pass src.raw enc.keel
keel -q snapshot create --key-file pass enc.keel e1
t "encrypted source" sh -c "'$KEEL' send --key-file pass enc.keel@e1 | '$KEEL' -q recv --key-file pass encdst.keel"
t "its replica is encrypted (locked without the key)" sh -c \
	"'$KEEL' info --output json encdst.keel | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"locked\"] and \"encryption\" in d[\"features\"]'"
expect_err "its replica needs the key to read" "a key is needed" keel compare src.raw encdst.keel
t "and equal with the key" keel compare --key-file pass src.raw encdst.keel

# ---- interrupted receive, resume token
KEEL_SEND_FAIL_AFTER=9000000 "$KEEL" -q send --checkpoint 1M src.keel@s2 > cut.kst 2>/dev/null
t "stream was cut" sh -c "[ \$(wc -c < cut.kst) -eq 9000000 ]"
expect_err "the cut stream fails" "truncated" keel recv -i cut.kst res.keel
t "keel info prints the resume token" sh -c "'$KEEL' info res.keel | grep -q 'resume token: keel1-'"
t "readers still see the empty image" sh -c "[ \"\$('$KEEL' snapshot list --output json res.keel)\" = '[]' ] && '$KEEL' -q io -c 'read -P 0 0 24M' res.keel"
t "check clean mid-receive" keel check res.keel
tok=$("$KEEL" recv --status res.keel)
expect_err "a new stream is refused while one waits" "interrupted receive is waiting" keel recv -i full.kst res.keel
expect_err "token for another snapshot refused" "another snapshot" keel send --resume "$tok" src.keel@s3 -o x.kst
expect_err "token with -i refused" "full stream" keel send --resume "$tok" -i s1 src.keel@s2 -o x.kst
expect_err "token with --raw refused" "non-raw" keel send --raw --key-file pass --resume "$tok" src.keel@s2 -o x.kst
bad=$(python3 -c "import sys; t=sys.argv[1]; i=6+2*170; print(t[:i]+('1' if t[i]=='0' else '0')+t[i+1:])" "$tok")
expect_err "token with a changed offset refused" "" keel send --resume "$bad" src.keel@s2 -o x.kst
t "no output for refused tokens" test ! -e x.kst
t "resume" sh -c "'$KEEL' -q send --resume '$tok' src.keel@s2 -o rest.kst && '$KEEL' -q recv -i rest.kst res.keel"
t "resumed replica equals s2" keel compare src.keel@s2 res.keel
t "resumed replica clean" keel check res.keel
t "resume stream smaller than the whole" sh -c "[ \$(wc -c < rest.kst) -lt \$(wc -c < full.kst) ]"
# a keyed resume: the token's MAC needs the passphrase
KEEL_SEND_FAIL_AFTER=9000000 "$KEEL" -q send --key-file pass --checkpoint 1M src.keel@s2 > kcut.kst 2>/dev/null
"$KEEL" -q recv --key-file pass -i kcut.kst kres.keel 2>/dev/null
ktok=$("$KEEL" recv --status --key-file pass kres.keel)
expect_err "keyed token without the key" "encrypted stream" keel send --resume "$ktok" src.keel@s2 -o x.kst
expect_err "keyed token with another key" "MAC" keel send --key-file other --resume "$ktok" src.keel@s2 -o x.kst
t "keyed resume" sh -c "'$KEEL' -q send --key-file pass --resume '$ktok' src.keel@s2 | '$KEEL' -q recv --key-file pass kres.keel"
t "keyed resumed replica" keel compare src.keel@s2 kres.keel
# the token only fits its target
KEEL_SEND_FAIL_AFTER=9000000 "$KEEL" -q send --checkpoint 1M src.keel@s2 > cut2.kst 2>/dev/null
"$KEEL" -q recv -i cut2.kst other.keel 2>/dev/null
"$KEEL" -q send --resume "$tok" src.keel@s2 -o rest1.kst 2>/dev/null
expect_err "a resumed stream for another target is refused" "another target\|another stream" keel recv -i rest1.kst other.keel
t "abort drops the receive" keel -q recv --abort other.keel
t "nothing in progress after abort" sh -c "'$KEEL' recv --status other.keel | grep -q 'no receive'"

# ---- damaged streams: detected, target left as it was
cp dst.keel base.keel # holds s1, s2
keel -q send --key-file pass -i s2 src.keel@s3 -o good.kst
keel -q send --key-file pass -i s2 src.keel@s3 -o good2.kst
d=$($ST findrec good.kst 2)
n=$($ST list good.kst | wc -l)
bad_case() { # DESCRIPTION PATTERN FILE
	cp base.keel victim.keel
	expect_err "$1" "$2" keel recv --key-file pass -i "$3" victim.keel
	if "$KEEL" compare src.keel@s2 victim.keel >/dev/null && "$KEEL" check victim.keel >/dev/null &&
		[ "$("$KEEL" snapshot list --output json victim.keel | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = 2 ] &&
		"$KEEL" recv --status victim.keel | grep -q 'no receive'; then ok "  ... target left as it was"
	else bad "  ... target changed after: $1"; fi
}
$ST flip good.kst b1.kst "$d" 40;        bad_case "one flipped byte" "CRC" b1.kst
python3 - good.kst b1b.kst "$d" <<'PY'
import struct, sys
def crc32c(data, crc=0xffffffff):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xffffffff
s = bytearray(open(sys.argv[1], 'rb').read()); i = int(sys.argv[3])
off = 0; recs = []
while off < len(s):
    n = struct.unpack_from('<I', s, off)[0]; recs.append((off, n)); off += 32 + n
o, n = recs[i]
s[o + 32 + 40] ^= 1
sid = bytes(s[recs[0][0] + 32 + 16:recs[0][0] + 32 + 32])
struct.pack_into('<I', s, o + 28, crc32c(sid + bytes(s[o:o + 28]) + bytes(s[o + 32:o + 32 + n])))
open(sys.argv[2], 'wb').write(bytes(s))
PY
bad_case "a flipped byte with its CRC fixed" "authentication" b1b.kst
$ST drop good.kst b2.kst "$d";           bad_case "a dropped record" "dropped, reordered" b2.kst
$ST swap good.kst b3.kst "$d" $((d + 1)); bad_case "two records swapped" "dropped, reordered" b3.kst
$ST dup good.kst b4.kst "$d";            bad_case "a replayed record" "dropped, reordered" b4.kst
$ST truncate good.kst b5.kst $(( $(wc -c < good.kst) - 100 )); bad_case "truncated" "truncated" b5.kst
$ST drop good.kst b6.kst $((n - 1));     bad_case "the trailer cut off" "truncated" b6.kst
$ST splice good.kst good2.kst b7.kst "$d"; bad_case "a record from another stream" "CRC" b7.kst
$ST concat good.kst good2.kst b8.kst;    bad_case "another stream concatenated" "after the stream's trailer" b8.kst
t "the good stream still applies" sh -c "cp base.keel victim.keel && '$KEEL' -q recv --key-file pass -i good.kst victim.keel && '$KEEL' compare src.keel@s3 victim.keel"

# ---- raw: the receiver never has the key
expect_err "raw needs a key" "needs the image's passphrase" keel send --raw src.keel@s1 -o r.kst
expect_err "a raw store refuses streams without a key" "encrypted streams only" sh -c "'$KEEL' send src.keel@s1 | '$KEEL' recv --raw rawstore"
keel -q io --key-file pass -c 'write -P 0x42 2M 512K' enc.keel
keel -q snapshot create --key-file pass enc.keel e2
t "raw full into a store (a key given to it is not used)" sh -c "'$KEEL' send --raw --key-file pass enc.keel@e1 | '$KEEL' -q recv --raw --key-file pass rawstore"
t "raw incremental" sh -c "'$KEEL' send --raw --key-file pass -i e1 enc.keel@e2 | '$KEEL' -q recv --raw rawstore"
t "store index lists both" sh -c "[ \$(grep -c . rawstore/index) -eq 3 ]"
t "no 64-byte plaintext run in the store" python3 - src.raw rawstore <<'PY'
import os, sys
src = open(sys.argv[1], 'rb').read()
blob = b''.join(open(os.path.join(sys.argv[2], f), 'rb').read() for f in os.listdir(sys.argv[2]))
pats = [src[o:o + 64] for o in range(0, len(src) - 64, 1 << 15)] + [b'\x42' * 64]
for p in pats:
    if len(set(p)) > 1 or p == b'\x42' * 64:
        if p in blob:
            sys.exit("plaintext found")
PY
t "restore from the store with the key" keel -q recv --key-file pass -i rawstore restored.keel
t "restored equals e2" keel compare --key-file pass enc.keel@e2 restored.keel
t "restored e1 too" keel compare --key-file pass enc.keel@e1 restored.keel@e1
t "byte-identical raw output" sh -c "'$KEEL' -q convert --key-file pass -O raw restored.keel r.raw && '$KEEL' -q convert --key-file pass -O raw enc.keel@e2 e.raw && cmp r.raw e.raw"
expect_err "restore needs the key" "" keel recv -i rawstore nokey.keel
expect_err "wrong key restores nothing" "authentication" keel recv --key-file other -i rawstore wrong.keel
t "nothing left by the failed restore" test ! -e wrong.keel
# a raw receive interrupted and resumed, still without the key
rsize=$("$KEEL" -q send --raw --key-file pass enc.keel@e1 | wc -c)
KEEL_SEND_FAIL_AFTER=$((rsize * 2 / 3)) "$KEEL" -q send --raw --key-file pass --checkpoint 1M enc.keel@e1 > rcut.kst 2>/dev/null
"$KEEL" -q recv --raw -i rcut.kst rawstore2 2>/dev/null
rtok=$("$KEEL" recv --status rawstore2)
t "raw store keeps a token" sh -c "echo '$rtok' | grep -q '^keel1-'"
t "raw resume" sh -c "'$KEEL' -q send --raw --key-file pass --resume '$rtok' enc.keel@e1 | '$KEEL' -q recv --raw rawstore2"
t "restore after the raw resume" sh -c "'$KEEL' -q recv --key-file pass -i rawstore2 r3.keel && '$KEEL' compare --key-file pass enc.keel@e1 r3.keel"
t "an incremental from the other store updates r3" sh -c "'$KEEL' send --raw --key-file pass -i e1 enc.keel@e2 | '$KEEL' -q recv --raw rawstore2 && '$KEEL' -q recv --key-file pass -i rawstore2 r3.keel && '$KEEL' compare --key-file pass enc.keel@e2 r3.keel"
finish
