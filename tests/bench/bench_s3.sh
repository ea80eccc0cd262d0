#!/usr/bin/env bash
# tests/bench/bench_s3.sh - keel replicate vs restic (s3 backend) to the same
# Ceph RGW, same run: the 8 nightly versions of a 2 GiB disk made by
# shared/bench/make-nightlies.sh (/tmp/anchors/img/night0..7.raw).
#
# For each tool and night: wall time, requests and bytes the store received
# (RGW's own per-bucket usage log, so both tools are counted the same way),
# and at the end the bytes stored in each bucket. One cluster, bluestore on a
# sparse file (the data is GiBs: memstore would hold twice that in RAM).
#
# Env: ANCHORS (default /tmp/anchors), NIGHTS (default 8), KEEP_CEPH=1.
set -u
cd "$(dirname "$0")/../.."
: "${KEEL:=$PWD/build/keel}"
ANCHORS=${ANCHORS:-/tmp/anchors}
NIGHTS=${NIGHTS:-8}
IMG=$ANCHORS/img

command -v restic >/dev/null || { echo "SKIP: restic is not installed"; exit 0; }
tests/s3/ceph.sh install || { echo "SKIP: Ceph cannot be installed"; exit 0; }
if [ ! -e "$IMG/night$((NIGHTS - 1)).raw" ]; then
	mk=""
	for d in ../shared /work/shared; do
		[ -x "$d/bench/make-nightlies.sh" ] || [ -f "$d/bench/make-nightlies.sh" ] && { mk=$d/bench/make-nightlies.sh; break; }
	done
	[ -n "$mk" ] || { echo "SKIP: no $IMG and no shared/bench/make-nightlies.sh"; exit 0; }
	echo "# building the nightly images with $mk (a few minutes)"
	ANCHORS=$ANCHORS bash "$mk" >/dev/null || { echo "make-nightlies.sh failed"; exit 1; }
fi

W=$(mktemp -d /tmp/bench-s3.XXXXXX)
CEPH=$W/ceph
cleanup() {
	[ "${KEEP_CEPH:-0}" = 1 ] || tests/s3/ceph.sh down "$CEPH" 2>/dev/null
	rm -rf "$W/cache" "$W/restic-cache"
	[ "${KEEP_CEPH:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
OSD_STORE=bluestore OSD_BYTES=$((40 << 30)) RGW_USAGE_LOG=1 tests/s3/ceph.sh up "$CEPH" >"$W/env" 2>"$W/ceph.log" ||
	{ cat "$W/ceph.log"; echo "could not start Ceph"; exit 1; }
. "$W/env"
export CEPH_CONF
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY AWS_REGION=us-east-1
export XDG_CACHE_HOME=$W/cache
s3curl() {
	curl -sS --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}
s3curl -f -X PUT "$S3_ENDPOINT/bench-keel" -o /dev/null
s3curl -f -X PUT "$S3_ENDPOINT/bench-restic" -o /dev/null
printf 'bench passphrase\n' >"$W/pass"
export RESTIC_PASSWORD="bench passphrase"
export RESTIC_REPOSITORY="s3:$S3_ENDPOINT/bench-restic/repo"
export RESTIC_CACHE_DIR=$W/restic-cache

# usage BUCKET -> "ops bytes_received" so far (RGW usage log, flushed each second)
usage() {
	sleep 2
	radosgw-admin usage show --uid=keel-test --show-log-entries=true 2>/dev/null |
		python3 -c 'import json,sys
d = json.load(sys.stdin); ops = rx = 0
for e in d.get("entries", []):
    for b in e.get("buckets", []):
        if b.get("bucket") != sys.argv[1]: continue
        for c in b.get("categories", []):
            ops += c.get("ops", 0); rx += c.get("bytes_received", 0)
print(ops, rx)' "$1"
}
stored() {
	radosgw-admin bucket stats --bucket="$1" 2>/dev/null |
		python3 -c 'import json,sys; u=json.load(sys.stdin)["usage"].get("rgw.main", {}); print(u.get("size", 0), u.get("num_objects", 0))'
}
now() { date +%s.%N; }

restic init >"$W/restic-init.log" 2>&1 || { cat "$W/restic-init.log"; exit 1; }
echo "# restic $(restic version | cut -d' ' -f2), $(grep -o 'version [0-9]*' "$W/restic-init.log" || echo 'repository')"
printf '%-7s %-6s %9s %9s %12s %s\n' night tool seconds requests bytes_up note
tk=0 tr=0
for n in $(seq 0 $((NIGHTS - 1))); do
	f=$IMG/night$n.raw
	u0=$(usage bench-keel)
	t0=$(now)
	"$KEEL" replicate --key-file "$W/pass" --endpoint "$S3_ENDPOINT" --name "night$n" --output json \
		"$f" s3://bench-keel/vm >"$W/k$n.json" 2>"$W/k$n.err" || { cat "$W/k$n.err"; exit 1; }
	t1=$(now)
	u1=$(usage bench-keel)
	dk=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
	note=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("new %d dedup %d zero %d chunks" % (d["chunks_new"], d["chunks_skipped"], d["chunks_zero"]))' "$W/k$n.json")
	printf '%-7s %-6s %9s %9d %12d %s\n' "$n" keel "$dk" $(( ${u1% *} - ${u0% *} )) $(( ${u1#* } - ${u0#* } )) "$note"
	u0=$(usage bench-restic)
	t0=$(now)
	restic backup --quiet --tag "night$n" "$f" >"$W/r$n.log" 2>&1 || { cat "$W/r$n.log"; exit 1; }
	t1=$(now)
	u1=$(usage bench-restic)
	dr=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
	printf '%-7s %-6s %9s %9d %12d\n' "$n" restic "$dr" $(( ${u1% *} - ${u0% *} )) $(( ${u1#* } - ${u0#* } ))
	tk=$(awk -v a="$tk" -v b="$dk" 'BEGIN{print a+b}')
	tr=$(awk -v a="$tr" -v b="$dr" 'BEGIN{print a+b}')
done
uk=$(usage bench-keel)
ur=$(usage bench-restic)
sk=$(stored bench-keel)
sr=$(stored bench-restic)
echo
printf '%-8s %10s %10s %14s %14s %8s\n' tool seconds requests bytes_up bytes_stored objects
printf '%-8s %10.1f %10d %14d %14d %8d\n' keel "$tk" "${uk% *}" "${uk#* }" "${sk% *}" "${sk#* }"
printf '%-8s %10.1f %10d %14d %14d %8d\n' restic "$tr" "${ur% *}" "${ur#* }" "${sr% *}" "${sr#* }"
awk -v tk="$tk" -v tr="$tr" -v sk="${sk% *}" -v sr="${sr% *}" -v rk="${uk% *}" -v rr="${ur% *}" 'BEGIN{
	printf "ratio keel/restic: time %.2f, requests %.2f, stored bytes %.2f (goal: time <= 0.5, stored <= 1)\n",
		tk / tr, rk / rr, sk / sr }'
# restore of the last night from the bucket, verified, as a sanity check
rm -f "$W/restored.raw"
t0=$(now)
"$KEEL" restore --key-file "$W/pass" --endpoint "$S3_ENDPOINT" "s3://bench-keel/vm@night$((NIGHTS - 1))" \
	-O raw "$W/restored.raw" >/dev/null && cmp -s "$W/restored.raw" "$IMG/night$((NIGHTS - 1)).raw" &&
	echo "restore of night$((NIGHTS - 1)) byte-identical in $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"
rm -f "$W/restored.raw"
