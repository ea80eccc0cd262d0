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

# Suites run KEEL_TEST_JOBS at a time (default: the number of CPUs): most
# of them wait on I/O, qemu or a server more than they compute. The longest
# known suites start first so that they do not finish last alone. Results
# print as each suite ends.
jobs=${KEEL_TEST_JOBS:-$(nproc 2>/dev/null || echo 1)}
[ "$jobs" -ge 1 ] 2>/dev/null || jobs=1
first="unit/format/test_keel shell/test_verify_boot shell/test_replicate_tls interop/test_s3
unit/replicate/test_stream interop/test_vhdx shell/test_send_recv interop/test_qcow2"

pass=0 fail=0 skip=0
failed=()
names=() cmds=()
add_suite() { # add_suite NAME CMD...: queued
	names+=("$1"); shift
	cmds+=("$(printf '%q ' "$@")")
}
order_suites() { # the "first" ones to the front, in the order listed there
	local f i on=() oc=() taken=()
	for f in $first; do
		for i in "${!names[@]}"; do
			[ "${names[$i]}" = "$f" ] || continue
			on+=("${names[$i]}"); oc+=("${cmds[$i]}"); taken[$i]=1
		done
	done
	for i in "${!names[@]}"; do
		[ -n "${taken[$i]:-}" ] && continue
		on+=("${names[$i]}"); oc+=("${cmds[$i]}")
	done
	names=("${on[@]}"); cmds=("${oc[@]}")
}
logof() { echo "$KEEL_TEST_TMP/$(echo "$1" | tr '/' '_').log"; }
start_suite() { # start_suite I: runs in the background, writes "rc seconds" when done
	local name=${names[$1]} log
	log=$(logof "$name")
	(
		t0=$(date +%s.%N)
		eval "${cmds[$1]}" >"$log" 2>&1
		rc=$?
		echo "$rc $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')" >"$log.rc"
	) &
}
failpat='^not ok|^[^ ]+:[0-9]+:[FE]:'
report() { # report I
	local name=${names[$1]} log rc dt
	log=$(logof "$name")
	read -r rc dt <"$log.rc"
	case $rc in
	0) pass=$((pass + 1)); printf 'PASS  %-44s %6ss  %s\n' "$name" "$dt" "$(tail -n 1 "$log")" ;;
	77) skip=$((skip + 1)); printf 'SKIP  %-44s %6ss  %s\n' "$name" "$dt" "$(grep -m1 'SKIP' "$log")" ;;
	*) fail=$((fail + 1)); failed+=("$name"); printf 'FAIL  %-44s %6ss  (exit %d)\n' "$name" "$dt" "$rc"
	   # the failed checks first (shell "not ok" with the line after,
	   # which often says why; Check's file:line:F: and :E: lines),
	   # wherever they are in a long log; then its tail
	   if grep -qE "$failpat" "$log"; then
		echo "    failed checks:"
		grep -A1 -E "$failpat" "$log" | head -n 80 | sed 's/^/    | /'
		echo "    last lines:"
	   fi
	   sed 's/^/    | /' "$log" | tail -n 60 ;;
	esac
}

if [ -z "$only" ] || [ "$only" = unit ]; then
	for bin in "$@"; do
		add_suite "unit/${bin#*/tests/unit/}" env CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-600} "$bin"
	done
fi
for kind in shell interop; do
	[ -z "$only" ] || [ "$only" = "$kind" ] || continue
	for t in tests/$kind/*.sh; do
		[ -e "$t" ] || continue
		case $(basename "$t") in lib.sh) continue ;; esac
		add_suite "$kind/$(basename "$t" .sh)" bash "$t"
	done
done

order_suites
echo "# ${#names[@]} suites, $jobs at a time (KEEL_TEST_JOBS)"
next=0 running=() done_n=0
while [ $done_n -lt ${#names[@]} ]; do
	while [ ${#running[@]} -lt "$jobs" ] && [ $next -lt ${#names[@]} ]; do
		start_suite $next
		running+=($next)
		next=$((next + 1))
	done
	wait -n 2>/dev/null || true
	still=()
	for i in "${running[@]}"; do
		if [ -e "$(logof "${names[$i]}").rc" ]; then
			report "$i"
			done_n=$((done_n + 1))
		else
			still+=("$i")
		fi
	done
	running=("${still[@]}")
done
echo
[ ${#failed[@]} -gt 0 ] && echo "failed suites: ${failed[*]}"
echo "$skip suites skipped"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
