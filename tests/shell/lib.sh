# tests/shell/lib.sh - helpers for the shell suites (sourced).
#
#   t "what is being tested"; CMD...  -> counts a pass or a fail
#   expect_rc N CMD...               -> passes when CMD exits with N
#   skip "reason"                    -> prints SKIP: reason, exits 77
#   finish                           -> prints "N passed, N failed", exit status
set -u
: "${KEEL:?KEEL must point at the keel binary}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd) # the source tree
T_PASS=0
T_FAIL=0
TMP=$(mktemp -d "${KEEL_TEST_TMP:-/tmp}/t.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
keel() { "$KEEL" "$@"; }

ok() { T_PASS=$((T_PASS + 1)); echo "ok - $*"; }
bad() { T_FAIL=$((T_FAIL + 1)); echo "not ok - $*"; }

# t DESCRIPTION CMD... : pass when CMD succeeds
t() {
	local d=$1; shift
	if "$@" >"$TMP/.out" 2>&1; then ok "$d"; else bad "$d"; sed 's/^/    # /' "$TMP/.out" | tail -20; fi
}
# expect_rc N DESCRIPTION CMD...
expect_rc() {
	local want=$1 d=$2; shift 2
	"$@" >"$TMP/.out" 2>&1
	local rc=$?
	if [ "$rc" -eq "$want" ]; then ok "$d"; else bad "$d (exit $rc, wanted $want)"; sed 's/^/    # /' "$TMP/.out" | tail -20; fi
}
# expect_err DESCRIPTION PATTERN CMD... : must fail (exit 1) with "keel: error:" matching PATTERN
expect_err() {
	local d=$1 pat=$2; shift 2
	"$@" >"$TMP/.out" 2>&1
	local rc=$?
	if [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ] && grep -q "keel: error:.*$pat" "$TMP/.out"; then ok "$d"
	else bad "$d (exit $rc)"; sed 's/^/    # /' "$TMP/.out" | tail -20; fi
}
skip() { echo "SKIP: $*"; exit 77; }
# retry_pbkdf2 OUT CMD...: a qemu-img that makes a LUKS header (create),
# whose PBKDF2 self-timing fails now and then under load ("Unable to get
# accurate CPU usage"): tried up to 8 times, @IT@ in CMD becoming a longer
# iter-time each time, a second apart. A failed try's OUT is removed; after
# the last, qemu-img's message is shown and the status is 1.
retry_pbkdf2() {
	local out=$1 it a args
	shift
	for it in 10 20 50 100 200 10 20 50; do
		args=()
		for a in "$@"; do args+=("${a//@IT@/$it}"); done
		rm -f "$out"
		"${args[@]}" 2>"$TMP/.pbkdf2.err" && return 0
		rm -f "$out"
		sleep 1
	done
	sed 's/^/    # /' "$TMP/.pbkdf2.err"
	return 1
}
finish() {
	echo "$T_PASS passed, $T_FAIL failed"
	[ "$T_FAIL" -eq 0 ]
}
# pattern_file PATH SIZE : deterministic test content with data, zero runs and holes
pattern_file() {
	local f=$1 size=$2
	truncate -s "$size" "$f"
	python3 - "$f" "$size" <<'PY'
import sys, random
f, size = sys.argv[1], int(sys.argv[2])
r = random.Random(42)
with open(f, 'r+b') as fh:
    off = 0
    while off < size:
        kind = r.choice(['data', 'data', 'zero', 'hole', 'text'])
        n = min(r.choice([4096, 65536, 300000, 1 << 20]), size - off)
        if kind == 'data':
            fh.seek(off); fh.write(r.randbytes(n))
        elif kind == 'text':
            fh.seek(off); fh.write(((b'keel test line %d\n' % off) * (n // 10 + 1))[:n])
        elif kind == 'zero':
            fh.seek(off); fh.write(bytes(n))
        off += n
PY
}
