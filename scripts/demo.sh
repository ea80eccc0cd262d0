#!/usr/bin/env bash
# scripts/demo.sh - `make demo`: keel's main job end to end, from nothing.
#
# Makes a sample VM disk (MBR, ext4 with an os-release), backs it up for
# three nights with changes in between into an encrypted vault, replicates
# each night to a second vault through `keel serve` over TLS on loopback,
# prunes, converts the latest snapshot to qcow2, VMDK and VHDX, runs a
# restore-and-verify drill on the replica, and prints a short report.
# Leaves nothing running; the work directory is removed at the end
# (KEEP_DEMO=1 keeps it).
set -euo pipefail
: "${KEEL:?}"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/keel-demo.XXXXXX)
SERVER_PID=""
cleanup() {
	local rc=$?
	if [ -n "$SERVER_PID" ]; then
		kill "$SERVER_PID" 2>/dev/null
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	if [ "${KEEP_DEMO:-0}" = 1 ]; then echo "(work directory kept: $W)"; else rm -rf "$W"; fi
	exit $rc
}
trap cleanup EXIT
k() { "$KEEL" "$@"; }
say() { printf '\n== %s\n' "$*"; }
has_cmd() { "$KEEL" help "$1" >/dev/null 2>&1; }
T0=$(date +%s.%N)
cd "$W"

say "a sample VM disk: 64 MiB, MBR, ext4 holding an os-release"
mkdir -p root/etc root/boot root/srv
printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' > root/etc/os-release
echo "demo kernel" > root/boot/vmlinuz-6.1.0-demo
echo "demo initrd" > root/boot/initrd.img-6.1.0-demo
cp -r /usr/share/doc/coreutils root/srv/ 2>/dev/null || true
head -c 8M /dev/urandom > root/srv/data.bin
truncate -s 63M part.ext4
mkfs.ext4 -q -F -d root part.ext4
truncate -s 64M disk.raw
echo 'start=2048, type=83' | sfdisk -q disk.raw
dd if=part.ext4 of=disk.raw bs=1M seek=1 conv=notrunc status=none
echo "disk.raw: $(du -h --apparent-size disk.raw | cut -f1) virtual, $(du -h disk.raw | cut -f1) allocated"
printf 'demo passphrase' > vault.key

night_change() { # change a few files inside the ext4, without mounting it
	dd if=disk.raw of=part.ext4 bs=1M skip=1 status=none
	head -c 3M /dev/urandom > "night$1.bin"
	date -u > "note$1.txt"
	debugfs -w -R "write night$1.bin /srv/night$1.bin" part.ext4 >/dev/null 2>&1
	debugfs -w -R "write note$1.txt /srv/note$1.txt" part.ext4 >/dev/null 2>&1
	dd if=part.ext4 of=disk.raw bs=1M seek=1 conv=notrunc status=none
}

REPL=0
TLS="--cert pki/client.crt --key pki/client.key --ca pki/ca.crt"
if has_cmd serve && has_cmd replicate && [ -x "$ROOT/scripts/make-test-ca.sh" ]; then
	say "an off-site vault: keel serve over TLS 1.3 with mutual certificates, on loopback"
	bash "$ROOT/scripts/make-test-ca.sh" "$W/pki" >/dev/null
	mkdir -p offsite
	# the off-site server never holds the vault's key: --raw replicas below
	"$KEEL" serve --listen 127.0.0.1:0 --port-file port --cert pki/server.crt --key pki/server.key \
		--ca pki/ca.crt --root offsite 2> serve.log &
	SERVER_PID=$!
	for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
	PORT=$(cat port)
	echo "keel serve listening on 127.0.0.1:$PORT (root: offsite/)"
	REPL=1
else
	say "(replication over TLS not available in this build: skipped)"
fi

for n in 1 2 3; do
	say "night $n: backup$( [ $REPL = 1 ] && echo ' + replicate')"
	[ $n -gt 1 ] && night_change $n
	k backup -o encrypt=on --key-file vault.key --name "night-$n" disk.raw vault.keel
	if [ $REPL = 1 ]; then
		k replicate --raw --key-file vault.key $TLS vault.keel "keel://127.0.0.1:$PORT/web"
	fi
done

say "prune: keep the last 2 nights"
k prune --key-file vault.key --keep-last 2 vault.keel | tail -n 1

say "the latest night for other hypervisors: qcow2, VMDK, VHDX (verified)"
for fmt in qcow2 vmdk vhdx; do
	if "$KEEL" help formats | awk '{print $1}' | grep -qx $fmt; then
		k restore --key-file vault.key --verify -O $fmt vault.keel "web.$fmt"
	else
		echo "($fmt driver not in this build)"
	fi
done

DRILL=(vault.keel)
if [ $REPL = 1 ]; then
	DRILL=($TLS --from "keel://127.0.0.1:$PORT/web")
fi
say "drill on $( [ $REPL = 1 ] && echo 'the off-site replica' || echo 'the vault'): restore, scrub, boot-verify"
set +e
k drill --key-file vault.key --expect-os debian --timeout 150 --output json "${DRILL[@]}" > drill.json
drill_rc=$?
set -e
python3 - drill.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("  snapshot %s (recovery point: %.0f s old)" % (d["snapshot"], d["recovery_point_age_s"]))
print("  restore %.2f s, scrub %.2f s, boot %.2f s with engine %s" % (d["restore_s"], d["scrub_s"], d["boot_s"], d["engine"] or "-"))
print("  recovery time to a verified boot: %.2f s" % d["recovery_time_s"])
print("  verdict: %s%s" % (d["verdict"].upper(), (" (" + d["reason"] + ")") if d.get("reason") else ""))
PY

say "report"
k info --key-file vault.key vault.keel | grep -E 'virtual size|stored bytes|dedup ratio|compression ratio'
k snapshot list --key-file vault.key vault.keel
[ $REPL = 1 ] && printf "  off-site raw store: %s, %s (the server never had the key)\n" \
	"$(ls offsite/web | grep -vc RAWSTORE) files" "$(du -sh offsite/web | cut -f1)"
for f in web.*; do if [ -e "$f" ]; then printf "  %-10s %s\n" "$f" "$(du -h --apparent-size "$f" | cut -f1)"; fi; done
printf '\ndemo finished in %.0f s (drill exit %d)\n' "$(echo "$(date +%s.%N) - $T0" | bc -l)" "$drill_rc"
exit $drill_rc
