#!/usr/bin/env bash
# tests/run-all.sh - run every suite and end with one "N passed, N failed" line.
#
# Suites: the Check unit-test binaries given as arguments, then each
# tests/shell/*.sh and tests/interop/*.sh script. A suite passes with exit
# 0, is skipped with exit 77 (it prints "SKIP: reason"), and fails otherwise.
# --only unit|shell|interop limits the run. KEEL points at the binary.
set -u
cd "$(dirname "$0")/.."
only=""
if [ "${1:-}" = "--only" ]; then only=$2; shift 2; fi
: "${KEEL:=$PWD/build/keel}"
export KEEL
export KEEL_TEST_TMP=${KEEL_TEST_TMP:-$(mktemp -d /tmp/keel-tests.XXXXXX)}
trap 'rm -rf "$KEEL_TEST_TMP"' EXIT

pass=0 fail=0 skip=0
failed=()
run_suite() {
	local name=$1; shift
	local log="$KEEL_TEST_TMP/$(echo "$name" | tr '/' '_').log"
	local t0=$(date +%s.%N)
	"$@" >"$log" 2>&1
	local rc=$?
	local dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
	case $rc in
	0) pass=$((pass + 1)); printf 'PASS  %-44s %6ss  %s\n' "$name" "$dt" "$(tail -n 1 "$log")" ;;
	77) skip=$((skip + 1)); printf 'SKIP  %-44s %6ss  %s\n' "$name" "$dt" "$(grep -m1 'SKIP' "$log")" ;;
	*) fail=$((fail + 1)); failed+=("$name"); printf 'FAIL  %-44s %6ss  (exit %d)\n' "$name" "$dt" "$rc"
	   sed 's/^/    | /' "$log" | tail -n 60 ;;
	esac
}

if [ -z "$only" ] || [ "$only" = unit ]; then
	for bin in "$@"; do
		run_suite "unit/${bin#*/tests/unit/}" env CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-600} "$bin"
	done
fi
for kind in shell interop; do
	[ -z "$only" ] || [ "$only" = "$kind" ] || continue
	for t in tests/$kind/*.sh; do
		[ -e "$t" ] || continue
		case $(basename "$t") in lib.sh) continue ;; esac
		run_suite "$kind/$(basename "$t" .sh)" bash "$t"
	done
done
echo
[ ${#failed[@]} -gt 0 ] && echo "failed suites: ${failed[*]}"
echo "$skip suites skipped"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
