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
t "help convert" sh -c "'$KEEL' help convert | grep -q 'usage: keel convert'"
t "version" sh -c "'$KEEL' --version | grep -q '^keel '"
finish
