#!/usr/bin/env bash
# tests/s3/ceph.sh - a throwaway one-node Ceph cluster with an S3 endpoint
# (radosgw) on 127.0.0.1, as plain processes under a scratch directory, for
# keel's S3 test suites and benchmarks.
#
#   ceph.sh install        install Debian's ceph-mon ceph-osd radosgw ceph-common
#                          when missing (root only; exit 77 when impossible)
#   ceph.sh up DIR         start mon + one OSD + radosgw in DIR (must be empty
#                          or absent), create an S3 user, print on stdout:
#                            S3_ENDPOINT=http://127.0.0.1:PORT
#                            S3_ACCESS_KEY=...  S3_SECRET_KEY=...  S3_REGION=...
#                            CEPH_DIR=DIR  CEPH_CONF=DIR/ceph.conf
#   ceph.sh down DIR       stop those daemons (rgw, osd, mon, in that order)
#                          and remove DIR; KEEP=1 keeps DIR for its logs
#
# Env for up: OSD_BYTES (memstore capacity, default 3 GiB; memstore holds
# the data in RAM at about 2x its size and blocks writes, never fails them,
# once full), OSD_STORE=bluestore for a sparse file instead, RGW_DNS_NAME
# (enables virtual-host-style bucket addressing for that name), RGW_USAGE_LOG=1
# (per-bucket request and byte counters, flushed every second, for
# `radosgw-admin usage show`: the benchmark counts requests with it).
#
# Pitfalls this avoids (each cost real time the first time round):
#  - radosgw defaults to ms_mon_client_mode=secure, which auth=none cannot
#    give: it loops forever on "get_initial_auth_request returned -13".
#  - a one-monitor cluster still batches each map change for 1 s of Paxos;
#    propose interval 0.05 makes start-up ~2-3 s instead of ~15 s.
#  - radosgw's lifecycle/quota threads make SIGTERM take 5-7 s; stopping
#    all daemons at once can hang radosgw for 20 s+: stop them one by one.
#  - with a port already taken the new radosgw dies, and an unsigned probe
#    may be answered by someone else's server: readiness is a SigV4 request
#    with this cluster's fresh credentials, and daemons run in the
#    foreground under our control so an early death is seen at once.
#  - curl's --aws-sigv4 does not send x-amz-content-sha256; RGW then fails
#    every signature. The header is sent explicitly.
set -euo pipefail

log() { echo "ceph.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

PKGS="ceph-mon ceph-osd radosgw ceph-common"
BINS="ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool"

have_all() {
	local b
	for b in $BINS curl python3 setsid; do command -v "$b" >/dev/null || return 1; done
}

do_install() {
	have_all && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "SKIP: Ceph is not installed and we are not root (apt-get install --no-install-recommends $PKGS)"
		exit 77
	fi
	log "installing $PKGS (about a minute)"
	export DEBIAN_FRONTEND=noninteractive
	if ! { apt-get install -y -qq --no-install-recommends $PKGS curl >&2 ||
	       { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends $PKGS curl >&2; }; }; then
		echo "SKIP: could not install $PKGS with apt-get"
		exit 77
	fi
	have_all || { echo "SKIP: Ceph binaries missing after install"; exit 77; }
}

# alive PID: exists and is not a zombie
alive() {
	local _p _c st
	read -r _p _c st _ 2>/dev/null <"/proc/$1/stat" || return 1
	[ "$st" != Z ]
}

# is_ours PID DIR: a ceph daemon started with "-c DIR/ceph.conf"
is_ours() {
	local comm
	read -r comm 2>/dev/null <"/proc/$1/comm" || return 1
	case $comm in ceph-mon|ceph-osd|radosgw) ;; *) return 1 ;; esac
	tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "-c $2/ceph.conf "
}

free_ports() {
	python3 -c 'import socket
ss=[socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))'
}

do_up() {
	local dir=$1 t0=$SECONDS
	have_all || die "Ceph is not installed: run '$0 install' (as root)"
	case $dir in *[[:space:]]*) die "DIR must not contain spaces" ;; esac
	[ -z "$(ls -A "$dir" 2>/dev/null)" ] || die "$dir is not empty"
	mkdir -p "$dir"/{run,log,mon.a,osd.0,rgw,crash}
	dir=$(cd "$dir" && pwd)
	local ports mon_port rgw_port
	ports=$(free_ports); mon_port=${ports% *}; rgw_port=${ports#* }
	local fsid osd_uuid ak sk
	fsid=$(cat /proc/sys/kernel/random/uuid)
	osd_uuid=$(cat /proc/sys/kernel/random/uuid)
	ak=$(od -An -tx1 -N10 /dev/urandom | tr -d ' \n' | tr a-f A-F)
	sk=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
	local bytes=${OSD_BYTES:-$((3 << 30))} store=${OSD_STORE:-memstore}
	local dns="" usage=""
	[ -n "${RGW_DNS_NAME:-}" ] && dns="rgw dns name = $RGW_DNS_NAME"
	[ "${RGW_USAGE_LOG:-0}" = 1 ] && usage="rgw enable usage log = true
rgw usage log tick interval = 1
rgw usage log flush threshold = 1"
	cat >"$dir/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
mon initial members = a
public addr = 127.0.0.1
public network = 127.0.0.1/32
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = $dir/run
crash dir = $dir/crash
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log
mon data = $dir/mon.\$id
osd data = $dir/osd.\$id
log to stderr = false
mon data avail warn = 2
mon data avail crit = 1
[mon]
paxos propose interval = 0.05
paxos min wait = 0.01
[osd]
osd objectstore = $store
memstore device bytes = $bytes
bluestore block path = $dir/osd.\$id/block.img
bluestore block size = $bytes
bluestore block create = true
bluestore fsck on mkfs = false
[client.rgw]
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $dir/rgw
rgw enable lc threads = false
rgw enable quota threads = false
$dns
$usage
CONF
	export CEPH_CONF=$dir/ceph.conf
	# on failure: stop what started, keep the logs
	trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed; logs in $dir/log"; tail -n 5 "$dir"/log/*.stderr >&2 2>/dev/null; KEEP=1 do_down "$dir"; fi' EXIT

	start() { # start NAME CMD...: foreground daemon in its own session
		local name=$1; shift
		setsid "$@" -f </dev/null >"$dir/log/$name.stderr" 2>&1 &
		echo $! >"$dir/run/$name.pid"
	}
	wait_for() { # wait_for NAME CMD...
		local name=$1 end=$((SECONDS + 120)); shift
		until "$@" >/dev/null 2>&1; do
			alive "$(cat "$dir/run/$name.pid")" || die "$name exited early (see $dir/log)"
			[ $SECONDS -lt $end ] || die "timed out waiting for $name"
			sleep 0.1
		done
	}
	monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null
	ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$dir/monmap"
	start mon.a ceph-mon -c "$CEPH_CONF" -i a
	wait_for mon.a ceph --connect-timeout 5 mon stat
	[ "$(ceph osd new "$osd_uuid")" = 0 ] || die "unexpected OSD id"
	ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>"$dir/log/osd.mkfs.err" >/dev/null ||
		die "ceph-osd --mkfs failed: $(tail -n 3 "$dir/log/osd.mkfs.err")"
	start osd.0 ceph-osd -c "$CEPH_CONF" -i 0
	wait_for osd.0 sh -c 'ceph osd dump | grep -q "^osd.0 up"'
	start client.rgw radosgw -c "$CEPH_CONF" -n client.rgw
	wait_for client.rgw curl -sf -o /dev/null "http://127.0.0.1:$rgw_port/"
	radosgw-admin user create --uid=keel-test --display-name="keel test" \
		--access-key="$ak" --secret="$sk" >"$dir/log/user.json"
	wait_for client.rgw curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ak:$sk" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "http://127.0.0.1:$rgw_port/"
	trap - EXIT
	log "ready in $((SECONDS - t0)) s on 127.0.0.1:$rgw_port ($store, $bytes bytes)"
	cat <<OUT
S3_ENDPOINT=http://127.0.0.1:$rgw_port
S3_ACCESS_KEY=$ak
S3_SECRET_KEY=$sk
S3_REGION=us-east-1
CEPH_DIR=$dir
CEPH_CONF=$dir/ceph.conf
OUT
}

do_down() {
	local dir name pid i
	dir=$(realpath -m "$1")
	for name in client.rgw osd.0 mon.a; do
		pid=$(cat "$dir/run/$name.pid" 2>/dev/null) || continue
		[[ $pid =~ ^[0-9]+$ ]] && alive "$pid" && is_ours "$pid" "$dir" || continue
		kill -TERM "$pid" 2>/dev/null || continue
		for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
		alive "$pid" && kill -KILL "$pid" 2>/dev/null
	done
	# daemons that never wrote a pid file (died half-way through up)
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		is_ours "$pid" "$dir" && alive "$pid" && kill -KILL "$pid" 2>/dev/null
	done
	if [ "${KEEP:-0}" = 1 ]; then log "stopped; kept $dir"; else rm -rf "$dir"; fi
	return 0
}

case ${1:-} in
install) do_install ;;
up) [ $# -eq 2 ] || die "usage: $0 up DIR"; do_up "$2" ;;
down) [ $# -eq 2 ] || die "usage: $0 down DIR"; do_down "$2" ;;
*) echo "usage: $0 install | up DIR | down DIR" >&2; exit 2 ;;
esac
