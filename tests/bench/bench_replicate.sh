#!/usr/bin/env bash
# keel replicate of one nightly change (night0 -> night1 of the 2 GiB nightly
# disks, ~2% changed) over loopback TLS to keel serve, against:
#   - the changed data compressed by zstd -3 (bytes on the wire vs that),
#   - borg backing up the same night into a local repository (wall time),
#   - the single-core AES-256-GCM + zstd ceiling measured in the same run
#     (openssl speed -elapsed, zstd -b3 on the changed data): throughput.
# Goals (issue 7): wire <= 1.05x compressed changed bytes; wall <= 0.2x borg;
# throughput >= 60% of the ceiling.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nightlies.sh"
ensure_nightlies || exit 0
need openssl
need zstd
need bc
ROOT=$PWD
d=$BENCH_DIR/replicate
rm -rf "$d"; mkdir -p "$d/srv"
cd "$d"
bash "$ROOT/scripts/make-test-ca.sh" pki >/dev/null
printf 'bench-passphrase' > pass
C="--cert pki/client.crt --key pki/client.key --ca pki/ca.crt"

# the source: night0 and night1 as snapshots of a .keel image
"$KEEL" -q backup --name n0 "$NIGHTS_DIR/night0.raw" src.keel
"$KEEL" serve --listen 127.0.0.1:0 --port-file port --cert pki/server.crt --key pki/server.key \
	--ca pki/ca.crt --root srv 2>serve.log &
SPID=$!
trap 'kill $SPID 2>/dev/null; cd /; rm -rf "$d"' EXIT
for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
URL=keel://127.0.0.1:$(cat port)
# the first replication (full night0) is set-up, not the measurement, but its rate is reported
timeit tfull "$KEEL" -q replicate $C src.keel "$URL/vm"
timeit tfullk "$KEEL" -q replicate $C --key-file pass --raw src.keel "$URL/vmraw"
full_bytes=$("$KEEL" info --output json src.keel | python3 -c 'import json,sys; print(json.load(sys.stdin)["details"]["logical bytes"])')
"$KEEL" -q backup --name n1 "$NIGHTS_DIR/night1.raw" src.keel
sync
timeit tinc "$KEEL" replicate $C --output json src.keel "$URL/vm"
cp "$BENCH_DIR/last.log" inc.json
sync
timeit tinck "$KEEL" replicate $C --key-file pass --raw --output json src.keel "$URL/vmraw"
cp "$BENCH_DIR/last.log" inck.json
"$KEEL" compare src.keel@n1 srv/vm >/dev/null || echo "WARNING: the replica differs from n1"

# the changed data itself, for zstd and for the ceiling
"$KEEL" diff --output json src.keel n0 n1 > diff.json
python3 - diff.json "$NIGHTS_DIR/night1.raw" changed.bin <<'PY'
import json, sys
ext = [e for e in json.load(open(sys.argv[1])) if e['type'] == 'data']
with open(sys.argv[2], 'rb') as src, open(sys.argv[3], 'wb') as out:
    for e in ext:
        src.seek(e['start']); out.write(src.read(e['length']))
PY
changed=$(stat -c %s changed.bin)
zchanged=$(zstd -3 -q -c changed.bin | wc -c)
zstd_speed=$(zstd -b3 -i3 changed.bin 2>&1 | tr '\r' '\n' | grep -o '[0-9.]* MB/s' | head -1 | cut -d' ' -f1)
gcm_speed=$(openssl speed -elapsed -seconds 3 -bytes 65536 -evp aes-256-gcm 2>/dev/null | tail -1 |
	awk '{ v = $NF; sub(/k$/, "", v); printf "%.1f", v * 1000 / 1e6 }')
ceiling=$(echo "1 / (1 / $zstd_speed + 1 / $gcm_speed)" | bc -l)
read -r wire_out wire_in sent skipped <<<"$(python3 -c "import json; d=json.load(open('inc.json')); print(d['wire_bytes_sent'], d['wire_bytes_received'], d['clusters_sent'], d['clusters_skipped'])")"
read -r kwire_out kwire_in <<<"$(python3 -c "import json; d=json.load(open('inck.json')); print(d['wire_bytes_sent'], d['wire_bytes_received'])")"
wire=$((wire_out + wire_in))
kwire=$((kwire_out + kwire_in))
tput=$(echo "$changed / $tinc / 1000000" | bc -l)
ktput=$(echo "$changed / $tinck / 1000000" | bc -l)

# borg on the same night
have_borg=0
if command -v borg >/dev/null; then
	export BORG_PASSPHRASE=bench-passphrase BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
	borg init --encryption=repokey-blake2 borg && have_borg=1
	(cd "$NIGHTS_DIR" && borg create --compression zstd,3 "$d/borg::n0" night0.raw)
	sync
	timeit tborg bash -c "cd '$NIGHTS_DIR' && borg create --compression zstd,3 '$d/borg::n1' night1.raw"
fi

printf '%-58s %s\n' "one nightly change (night0 -> night1, 2 GiB disk)" ""
printf '%-58s %s\n' "  changed data" "$changed bytes ($(numfmt --to=iec $changed))"
printf '%-58s %s\n' "  zstd -3 of the changed data" "$zchanged bytes"
printf '%-58s %s\n' "  keel replicate: bytes on the wire (both ways, TLS)" "$wire ($(ratio $wire $zchanged)x zstd; goal <= 1.05)"
printf '%-58s %s\n' "  keel replicate --key-file --raw: bytes on the wire" "$kwire ($(ratio $kwire $zchanged)x zstd)"
printf '%-58s %s\n' "  clusters sent / skipped (held by the server)" "$sent / $skipped"
printf '%-58s %s\n' "  keel replicate wall time" "${tinc}s"
printf '%-58s %s\n' "  keel replicate --key-file --raw wall time" "${tinck}s"
if [ $have_borg = 1 ]; then
	printf '%-58s %s\n' "  borg create (repokey-blake2, zstd,3), same night" "${tborg}s"
	echo "  wall time keel/borg: $(ratio $tinc $tborg) (keyed raw: $(ratio $tinck $tborg)); goal <= 0.2"
fi
printf '%-58s %s\n' "  single-core ceiling: AES-256-GCM $gcm_speed MB/s, zstd -3 $zstd_speed MB/s; both" "$(printf '%.1f' $ceiling) MB/s"
printf '%-58s %s\n' "  keel replicate throughput (changed bytes / wall)" "$(printf '%.1f' $tput) MB/s ($(ratio $tput $ceiling) of the ceiling; goal >= 0.6)"
printf '%-58s %s\n' "  keyed raw throughput" "$(printf '%.1f' $ktput) MB/s ($(ratio $ktput $ceiling) of the ceiling)"
printf '%-58s %s\n' "  full first replication of night0 (steady state)" "$(printf '%.1f' "$(echo "$full_bytes / $tfull / 1000000" | bc -l)") MB/s in ${tfull}s, keyed raw ${tfullk}s"
echo "  load average during the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
