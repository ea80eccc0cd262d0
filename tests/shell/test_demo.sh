#!/usr/bin/env bash
# make demo's script end to end (issue: "make demo runs in CI"): three nights
# of backup replicated --raw to keel serve over TLS, prune, restore to
# qcow2/VMDK/VHDX, a drill of the replica that boots; and nothing left
# running afterwards.
. "$(dirname "$0")/lib.sh"
APP=${KEEL_APPLIANCE_DIR:-$(dirname "$KEEL")/appliance}
export KEEL_APPLIANCE_DIR=$APP
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 not installed (the drill boots)"
[ -r "$APP/initrd.cpio" ] || skip "appliance not built ($APP)"
for tool in mkfs.ext4 debugfs sfdisk openssl bc; do
	command -v $tool >/dev/null || skip "$tool not installed"
done
if [ "${KEEL_TEST_QUICK:-0}" = 1 ]; then
	# the sanitizer run covers these commands in their own suites; a
	# sanitized demo would mostly time the appliance boot
	skip "quick mode (sanitizer run): the demo runs in the plain make check"
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# KEEP_DEMO=1 keeps the work directory, so that what still runs in it can be found
KEEP_DEMO=1 "$ROOT/scripts/demo.sh" > "$TMP/out" 2>&1
rc=$?
W=$(sed -n 's/^(work directory kept: \(.*\))$/\1/p' "$TMP/out")
trap 'rm -rf "$TMP" ${W:+"$W"}' EXIT
t "demo exits 0" test $rc = 0 || tail -n 30 "$TMP/out"
t "three nights replicated" sh -c "[ \$(grep -c '^replicated vault.keel@night-. to keel://127.0.0.1' '$TMP/out') = 3 ]"
t "incremental after the first" grep -q 'night-3 to keel://.* from night-2' "$TMP/out"
t "pruned to two" grep -q 'prune vault.keel: 2 kept, 1 pruned' "$TMP/out"
for fmt in qcow2 vmdk vhdx; do
	t "restored to $fmt, verified" grep -q "web.$fmt ($fmt): .*verified" "$TMP/out"
done
t "the drill ran on the replica" grep -q '== drill on the off-site replica' "$TMP/out"
t "drill verdict PASS" grep -q 'verdict: PASS' "$TMP/out"
t "the off-site store is raw (keyless)" grep -q 'off-site raw store' "$TMP/out"
t "the work directory was reported" test -d "$W"
# no process may still have the demo's directory as its working directory
# (keel serve ran there); other suites' servers run elsewhere
left_in() {
	local p
	for p in /proc/[0-9]*; do
		[ "$(readlink "$p/cwd" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"
	done
}
t "nothing left running" test -z "$(left_in "$W")"
finish
