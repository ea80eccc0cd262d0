# tests/s3/lib-s3.sh - sourced by the S3 suites after tests/shell/lib.sh.
#
#   s3_start      install Ceph when missing (or SKIP, exit 77), start one
#                 cluster for this suite under $TMP, export S3_ENDPOINT,
#                 S3_PORT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#                 AWS_REGION, KEEL_S3_ENDPOINT; stopped when the suite exits.
#                 With KEEL_S3_TEST_ENV=FILE (the output of ceph.sh up) an
#                 already running cluster is used instead (development).
#   s3curl ARGS   curl signed with the test credentials (SigV4)
#   s3_mkbucket B create bucket B
#   s3_keys B [PREFIX]      list keys (one per line)
#   s3_fetch_all B DIR      download every object of bucket B into DIR
S3_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
S3_PIDS=()

s3_stop() {
	local p
	for p in "${S3_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	if [ -n "${S3_CEPH_DIR:-}" ]; then "$S3_LIB_DIR/ceph.sh" down "$S3_CEPH_DIR" 2>/dev/null; fi
	rm -rf "$TMP"
}

s3_start() {
	local envf
	if [ -n "${KEEL_S3_TEST_ENV:-}" ]; then
		envf=$KEEL_S3_TEST_ENV
	else
		"$S3_LIB_DIR/ceph.sh" install || exit $?
		S3_CEPH_DIR=$TMP/ceph
		envf=$TMP/ceph.env
		RGW_DNS_NAME=localhost "$S3_LIB_DIR/ceph.sh" up "$S3_CEPH_DIR" >"$envf" 2>"$TMP/ceph.log" || {
			cat "$TMP/ceph.log"
			S3_CEPH_DIR=
			echo "not ok - could not start Ceph"; exit 1
		}
	fi
	trap s3_stop EXIT
	# shellcheck disable=SC1090
	. "$envf"
	S3_PORT=${S3_ENDPOINT##*:}
	export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
	export AWS_REGION=${S3_REGION:-us-east-1} KEEL_S3_ENDPOINT=$S3_ENDPOINT
	export XDG_CACHE_HOME=$TMP/cache
	unset AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN
	echo "# S3 endpoint $S3_ENDPOINT"
}

s3curl() {
	curl -sS --max-time 60 --aws-sigv4 "aws:amz:us-east-1:s3" \
		--user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

s3_mkbucket() { s3curl -f -X PUT "$S3_ENDPOINT/$1" -o /dev/null; }

# keys of bucket $1 under prefix $2 (the test buckets hold < 1000 objects)
s3_keys() {
	local q="list-type=2"
	[ -n "${2:-}" ] && q="list-type=2&prefix=$(python3 -c 'import sys,urllib.parse;print(urllib.parse.quote(sys.argv[1],safe=""))' "$2")"
	s3curl -f "$S3_ENDPOINT/$1?$q" | grep -o '<Key>[^<]*</Key>' | sed 's/<Key>//; s/<\/Key>//'
}

s3_fetch_all() {
	local b=$1 d=$2 k
	mkdir -p "$d"
	for k in $(s3_keys "$b"); do
		s3curl -f "$S3_ENDPOINT/$b/$k" -o "$d/$(echo "$k" | tr / _)" || return 1
	done
}

# faultproxy ARGS... : start tests/s3/faultproxy.py in front of RGW; sets
# FP_PORT, and FP_LOG (one line per request: number, fault, request line)
faultproxy() {
	local pf=$TMP/fp.$RANDOM
	FP_LOG=$pf.log
	python3 "$S3_LIB_DIR/faultproxy.py" "127.0.0.1:$S3_PORT" --log "$FP_LOG" "$@" >"$pf" &
	S3_PIDS+=($!)
	FP_PID=$!
	for _ in $(seq 100); do [ -s "$pf" ] && break; sleep 0.1; done
	FP_PORT=$(cat "$pf")
}
