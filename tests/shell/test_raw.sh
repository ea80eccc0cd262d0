#!/usr/bin/env bash
# Raw images through the CLI: info, map, io, compare, convert.
. "$(dirname "$0")/lib.sh"

pattern_file "$TMP/a.raw" $((16 * 1024 * 1024 + 4096 * 3))
t "info on raw" keel info "$TMP/a.raw"
t "info json on raw" sh -c "'$KEEL' info --output json '$TMP/a.raw' | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"format\"]==\"raw\"'"
t "map lists zero and data" sh -c "'$KEEL' map --output json '$TMP/a.raw' | python3 -c 'import json,sys; m=json.load(sys.stdin); assert {e[\"type\"] for e in m} >= {\"data\",\"zero\"}'"
t "convert raw -> raw --verify" keel convert -O raw --verify "$TMP/a.raw" "$TMP/b.raw"
t "compare identical" keel compare "$TMP/a.raw" "$TMP/b.raw"
t "converted output is sparse" sh -c "[ \$(du -k '$TMP/b.raw' | cut -f1) -le \$(du -k '$TMP/a.raw' | cut -f1) ]"
printf 'X' | dd of="$TMP/b.raw" bs=1 seek=5000000 conv=notrunc 2>/dev/null
expect_rc 3 "compare finds a one-byte difference" keel compare "$TMP/a.raw" "$TMP/b.raw"
t "difference offset printed" sh -c "'$KEEL' compare '$TMP/a.raw' '$TMP/b.raw' | grep -q 'offset 5000000'"
expect_err "probed raw refuses writes" "probed as raw" keel io -c "write 0 4k" "$TMP/a.raw"
t "explicit -f raw writes" keel io -f raw -c "write -P 0x5a 4096 8192" -c "read -P 0x5a 4096 8192" "$TMP/a.raw"
expect_rc 3 "read -P detects other data" keel io -c "read -P 0x11 4096 4096" "$TMP/a.raw"
expect_rc 2 "unknown command is a usage error" keel frobnicate
expect_rc 2 "missing args is a usage error" keel convert
expect_err "missing file" "No such file" keel info "$TMP/nope.raw"
# compressed files and archives that no format claims are refused when
# probing would read them as raw disks (a GCE export, a disk.raw.xz), with
# what they look like; -f raw still reads their bytes
head -c 1048576 "$TMP/a.raw" >"$TMP/d.raw"
gzip -c "$TMP/d.raw" >"$TMP/d.raw.gz"
xz -c "$TMP/d.raw" >"$TMP/d.raw.xz" 2>/dev/null || printf '\3757zXZ\0rest' >"$TMP/d.raw.xz"
zstd -q -c "$TMP/d.raw" >"$TMP/d.raw.zst" 2>/dev/null || printf '\050\265\057\375rest' >"$TMP/d.raw.zst"
bzip2 -c "$TMP/d.raw" >"$TMP/d.raw.bz2" 2>/dev/null || printf 'BZh91AY&SYrest' >"$TMP/d.raw.bz2"
(cd "$TMP" && tar -cf d.tar d.raw && tar -czf d.tar.gz d.raw)
expect_err "gzip file refused when probed" "d.raw.gz is gzip-compressed data" keel info "$TMP/d.raw.gz"
# a tar.gz is read as GCE's format (format/gce.c), which names what it holds
expect_err "tar.gz without disk.raw refused by convert" "d.tar.gz: no file 'disk.raw' in the archive (it holds 1: d.raw); pick one with FILE@NAME" \
	keel convert -O qcow2 "$TMP/d.tar.gz" "$TMP/gz.qcow2"
t "...and left no output" test ! -e "$TMP/gz.qcow2"
expect_err "xz file refused" "d.raw.xz is xz-compressed data" keel compare "$TMP/d.raw" "$TMP/d.raw.xz"
expect_err "zstd file refused" "d.raw.zst is zstd-compressed data" keel map "$TMP/d.raw.zst"
expect_err "bzip2 file refused" "d.raw.bz2 is bzip2-compressed data" keel info "$TMP/d.raw.bz2"
expect_err "plain tar refused" "d.tar is a tar archive (not an OVA, no disk.raw first" keel info "$TMP/d.tar"
t "-f gce reads a member of a plain tar" keel compare -F gce "$TMP/d.raw" "$TMP/d.tar@d.raw"
t "-f raw still reads the bytes" sh -c "'$KEEL' info -f raw '$TMP/d.raw.gz' | grep -q 'file format: raw'"
t "a raw disk whose text mentions BZh is still raw" sh -c \
	"printf 'BZh9 not a bzip2 stream' >'$TMP/bz.raw' && truncate -s 1M '$TMP/bz.raw' && '$KEEL' info '$TMP/bz.raw' | grep -q 'file format: raw'"
t "help convert" sh -c "'$KEEL' help convert | grep -q 'usage: keel convert'"
t "version" sh -c "'$KEEL' --version | grep -q '^keel '"
finish
