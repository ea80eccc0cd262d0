#!/usr/bin/env bash
# tests/interop/test_s3.sh - keel replicate / restore / prune / scrub against a
# real Ceph RGW on loopback (tests/s3/ceph.sh; one cluster for this suite).
#
# Evidence for issue 9: three successive states replicated and restored
# byte-identical from a fresh directory holding only the URL and the key;
# a replicate killed mid-way resumes uploading only what is missing (PUTs
# counted from --output json); prune + gc concurrently with a replicate
# deletes nothing referenced and scrub passes; wrong credentials, a missing
# bucket, a wrong passphrase, an unreachable or failing endpoint give clear
# errors, a flaky one (503s, dropped and cut connections from
# tests/s3/faultproxy.py) is retried to success, and nothing half-visible
# is left; no object contains a 64-byte run of known image plaintext;
# damage is found by scrub (exit 3) and named.
. "$(dirname "$0")/../shell/lib.sh"
. "$(dirname "$0")/../s3/lib-s3.sh"

s3_start   # installs Ceph (and curl) when missing, or SKIPs with the reason

W=$TMP/work
mkdir -p "$W"
cd "$W" || exit 1
printf 'correct horse battery staple\n' >pass
export KEEL_S3_BACKOFF_MS=20
K=(--key-file "$W/pass")
# J FILE EXPR: evaluate EXPR on the JSON summary in FILE (d); other lines are skipped
J() {
	python3 -c 'import json,sys
t = open(sys.argv[1]).read()
d = json.loads(t[t.index("{\n"):t.rindex("\n}") + 2])
print(eval(sys.argv[2], {}, {"d": d}))' "$@"
}

# mkstate OUT SEED [BASE]: a 24 MiB sparse image: random data, compressible
# text carrying a marker line, zero runs and holes; with BASE, a copy of BASE
# with some 64 KiB blocks rewritten and a new text region.
mkstate() {
	python3 - "$@" <<'PY'
import random, shutil, sys
out, seed = sys.argv[1], int(sys.argv[2])
base = sys.argv[3] if len(sys.argv) > 3 else None
M = 1 << 20
marker = b"KEEL-S3-PLAINTEXT-MARKER-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
r = random.Random(seed)
if base:
    shutil.copyfile(base, out)
    with open(out, "r+b") as f:
        for _ in range(24):
            f.seek(r.randrange(0, 24 * M // 65536) * 65536)
            f.write(r.randbytes(65536))
        f.seek(20 * M + seed * 65536)
        f.write((marker + b"line %d\n" % seed) * 2000)
else:
    with open(out, "wb") as f:
        f.truncate(24 * M)
        f.seek(0); f.write(r.randbytes(6 * M))
        f.seek(8 * M); f.write(marker * (2 * M // len(marker)))
        f.seek(12 * M); f.write(bytes(M))            # written zeros
        f.seek(16 * M); f.write(r.randbytes(4 * M))
        f.seek(24 * M - 4096); f.write(r.randbytes(4096))
PY
}

mkstate s1.raw 1
mkstate s2.raw 2 s1.raw
mkstate s3.raw 3 s2.raw
cp --sparse=always s3.raw vm.raw
s3_mkbucket keel-test
s3_mkbucket keel-vhost
URL=s3://keel-test/vms/vm1

# ------------------------------------------------------------------ replicate 3 states
cp --sparse=always s1.raw vm.raw
t "replicate state 1 (creates the repository)" keel replicate "${K[@]}" --name night1 --output json vm.raw $URL
cp "$TMP/.out" r1.json
cp --sparse=always s2.raw vm.raw
t "replicate state 2" keel replicate "${K[@]}" --name night2 --output json vm.raw $URL
cp "$TMP/.out" r2.json
cp --sparse=always s3.raw vm.raw
t "replicate state 3" keel replicate "${K[@]}" --name night3 -p --output json vm.raw $URL
cp "$TMP/.out" r3.json
echo "# night1: $(J r1.json '(d["chunks_new"], d["chunks_skipped"], d["chunks_zero"], d["requests"]["put"], d["bytes_uploaded"])') (new, dedup, zero, PUTs, bytes)"
echo "# night2: $(J r2.json '(d["chunks_new"], d["chunks_skipped"], d["chunks_zero"], d["requests"]["put"], d["bytes_uploaded"])')"
t "night 2 uploads only the changed chunks (25-40 of ~190)" \
	test "$(J r2.json '25 <= d["chunks_new"] <= 40 and d["chunks_skipped"] > 150')" = True
t "night 3 dedups against nights 1 and 2" \
	test "$(J r3.json 'd["chunks_new"] <= 40 and d["chunks_skipped"] > 150')" = True
expect_err "the same name again is refused" "already has a snapshot 'night3'" \
	keel replicate "${K[@]}" --name night3 vm.raw $URL
t "restore --list shows the three snapshots" sh -c \
	"'$KEEL' restore --list --key-file '$W/pass' $URL | grep -c '^night' | grep -qx 3"

# ------------------------------------------------------------------ fresh machine
F=$TMP/fresh
mkdir -p "$F"
cp pass "$F/pass"
for n in 1 2 3; do
	(cd "$F" && HOME=$F XDG_CACHE_HOME=$F/cache "$KEEL" restore --key-file pass \
		"$URL@night$n" -O raw "n$n.raw" --verify) >"$TMP/.out" 2>&1
	if cmp -s "$F/n$n.raw" "s$n.raw"; then ok "fresh dir: night$n restores byte-identical"
	else bad "fresh dir: night$n restores byte-identical"; sed 's/^/    # /' "$TMP/.out"; fi
done
t "restored image is sparse" test "$(du -k "$F/n1.raw" | cut -f1)" -lt 20000
expect_err "restore never overwrites" "already exists" \
	keel restore "${K[@]}" "$URL@night1" -O raw "$F/n1.raw"
expect_err "restore of an unknown snapshot" "has no snapshot 'nope'" \
	keel restore "${K[@]}" "$URL@nope" -O raw "$F/x.raw"
# the test disks hold random data, so the boot step is left out (the
# verify-boot suites boot real disks); restore + repository scrub must pass
t "drill the latest snapshot from the repository" sh -c "cd '$F' && HOME='$F' XDG_CACHE_HOME='$F/cache' \
	'$KEEL' drill --skip-boot --key-file pass --from '$URL' --output json > drill.json && \
	python3 -c \"import json; d=json.load(open('drill.json')); assert d['snapshot']=='night3' and d['restore_ok'] and d['scrub_ok'] and d['verdict']=='pass', d\""

# ------------------------------------------------------------------ .keel internal snapshots
if keel help formats 2>/dev/null | grep -qw keel; then
	KV=s3://keel-test/vault
	keel create -f keel vault.keel 32M >/dev/null
	keel io -c 'write -P 0x11 0 8M' -c 'write -P 0x12 12M 4M' vault.keel >/dev/null
	keel snapshot create vault.keel day1 >/dev/null
	t "keel: replicate the first snapshot" keel replicate "${K[@]}" vault.keel $KV
	keel io -c 'write -P 0x21 1M 64K' -c 'write -P 0x22 20M 128K' vault.keel >/dev/null
	keel snapshot create vault.keel day2 >/dev/null
	keel io -c 'write -P 0x31 5M 64K' -c 'discard 12M 1M' vault.keel >/dev/null
	keel snapshot create vault.keel day3 >/dev/null
	t "keel: replicate every snapshot not there yet" keel replicate "${K[@]}" --output json vault.keel $KV
	cp "$TMP/.out" vault.json
	echo "# .keel: $(J vault.json '(d["snapshots"], d["snapshots_skipped"], d["chunks_unchanged_not_read"], d["chunks_new"])') (replicated, already there, unchanged not read, new)"
	t "keel: day2 and day3 replicated, day1 skipped" \
		test "$(J vault.json 'd["snapshots"] == ["day2", "day3"] and d["snapshots_skipped"] == 1')" = True
	t "keel: unchanged chunks come from the snapshot diff, not read" \
		test "$(J vault.json 'd["chunks_unchanged_not_read"] >= 800 and d["chunks_new"] <= 5')" = True
	for n in day1 day2 day3; do
		rm -f "v-$n.raw" "c-$n.raw"
		keel convert -O raw "vault.keel@$n" "c-$n.raw" >/dev/null
		t "keel: $n restores byte-identical" sh -c \
			"'$KEEL' restore --key-file '$W/pass' $KV@$n -O raw v-$n.raw && cmp v-$n.raw c-$n.raw"
	done
	rm -f v3.keel
	t "keel: restore to a .keel image" sh -c \
		"'$KEEL' restore --key-file '$W/pass' $KV@day3 -O keel v3.keel && '$KEEL' compare v3.keel c-day3.raw"
else
	echo "# no .keel format in this build: internal-snapshot replication not tested"
fi

# ------------------------------------------------------------------ interrupted replicate
python3 -c 'import random; open("big.raw","wb").write(random.Random(7).randbytes(40 << 20))'
base=$(s3_keys keel-test vms/vm1/index/ | wc -l)
# PUTs after the 4th (2 packs + their indexes) are held by the proxy: the
# replicate is frozen mid-way at a known point, then killed
faultproxy --hold-puts-after 4 --hold-file "$TMP/never"
keel replicate "${K[@]}" --name big --connections 1 --limit-rate 8M \
	--endpoint http://127.0.0.1:$FP_PORT big.raw $URL >kill.out 2>&1 &
RP=$!
have=$base
for _ in $(seq 600); do
	have=$(s3_keys keel-test vms/vm1/index/ | wc -l)
	[ "$have" -ge $((base + 2)) ] && break
	sleep 0.1
done
sleep 0.5
kill -9 $RP 2>/dev/null; wait $RP 2>/dev/null
have=$(s3_keys keel-test vms/vm1/index/ | wc -l)
echo "# killed with $((have - base)) of 6 packs of 'big' stored"
t "killed replicate stored exactly 2 packs" test "$have" -eq $((base + 2))
t "killed replicate left no snapshot" sh -c \
	"! '$KEEL' restore --list --key-file '$W/pass' $URL | grep -q '^big '"
t "resume after the kill" keel replicate "${K[@]}" --name big --output json big.raw $URL
cp "$TMP/.out" resume.json
echo "# resume: $(J resume.json '(d["chunks_new"], d["chunks_skipped"], d["packs_uploaded"], d["requests"]["put"])') (new, skipped, packs, PUTs)"
t "resume skips the chunks already stored" \
	test "$(J resume.json "d['chunks_skipped'] >= 127 * $((have - base))")" = True
t "resume uploads only what is missing" \
	test "$(J resume.json "d['chunks_new'] + d['chunks_skipped'] == 640 and d['chunks_new'] <= 640 - 127 * $((have - base))")" = True
t "resume PUTs = 2 per new pack + 1 manifest" \
	test "$(J resume.json 'd["requests"]["put"] == 2 * d["packs_uploaded"] + 1')" = True
rm -f big.out.raw
t "resumed snapshot restores byte-identical" sh -c \
	"'$KEEL' restore --key-file '$W/pass' $URL@big -O raw big.out.raw && cmp big.raw big.out.raw"

# ------------------------------------------------------------------ prune + gc during a replicate
G=s3://keel-test/gc
python3 - <<'PY'
import random
r = random.Random(11)
a = r.randbytes(8 << 20)
open("ga.raw", "wb").write(a)
open("gb.raw", "wb").write(r.randbytes(8 << 20))
# C shares A's first half, then 8 MiB of its own
open("gc.raw", "wb").write(a[: 4 << 20] + r.randbytes(8 << 20))
PY
t "gc: replicate A" keel replicate "${K[@]}" --name a ga.raw $G
t "gc: replicate B" keel replicate "${K[@]}" --name b gb.raw $G
# A's packs must be older than the 2 s grace below by the store's clock,
# whose Date header has 1 s resolution (keel rounds "now" down: safe side)
sleep 3.5
# C dedups against A's packs at once; its first PUT is then held by the
# proxy until both prunes ran (the sweep deletes A's pack under it)
faultproxy --hold-puts-after 0 --hold-file "$TMP/release-c"
keel replicate "${K[@]}" --name c --endpoint http://127.0.0.1:$FP_PORT --output json gc.raw $G \
	>gc-rep.json 2>gc-rep.err &
RP=$!
for _ in $(seq 600); do
	grep -q "hold PUT" "$FP_LOG" 2>/dev/null && break
	sleep 0.1
done
t "gc: prune removes A and condemns its packs (replicate running)" \
	keel prune "${K[@]}" --keep-last 1 --grace 2 --output json $G
cp "$TMP/.out" p1.json
sleep 3.5
t "gc: second prune sweeps A's packs (replicate still running)" \
	keel prune "${K[@]}" --grace 2 --output json $G
cp "$TMP/.out" p2.json
t "gc: the replicate was still running during both prunes" kill -0 $RP
touch "$TMP/release-c"
wait $RP
rc=$?
echo "# prune 1: $(J p1.json '(d["snapshots"], d["packs_condemned"], d["objects_deleted"])'); prune 2: $(J p2.json '(d["packs_condemned"], d["objects_deleted"])') (condemned, deleted)"
echo "# concurrent replicate: $(J gc-rep.json '(d["ok"], d["chunks_new"], d["chunks_skipped"])') (ok, new, skipped)"
t "gc: concurrent replicate succeeded" test "$rc" -eq 0
t "gc: the sweep deleted A's packs" test "$(J p2.json 'd["objects_deleted"] >= 2')" = True
t "gc: the replicate re-uploaded what the sweep took (commit check)" \
	test "$(J gc-rep.json 'd["chunks_new"] >= 192')" = True
t "gc: scrub passes after prune + concurrent replicate" keel scrub "${K[@]}" $G
for s in b c; do
	rm -f "g$s.out"
	t "gc: snapshot $s restores byte-identical" sh -c \
		"'$KEEL' restore --key-file '$W/pass' $G@$s -O raw g$s.out && cmp g$s.raw g$s.out"
done
sleep 2.1
t "gc: a later prune leaves everything referenced" keel prune "${K[@]}" --grace 2 $G
sleep 2.1
t "gc: and the next one too" keel prune "${K[@]}" --grace 2 --output json $G
t "gc: scrub passes at the end" keel scrub "${K[@]}" $G
rm -f gc.out
t "gc: c still restores" sh -c "'$KEEL' restore --key-file '$W/pass' $G@c -O raw gc.out && cmp gc.raw gc.out"

# ------------------------------------------------------------------ errors and faults
expect_err "wrong secret key: clear error" "access denied" \
	env AWS_SECRET_ACCESS_KEY=wrong "$KEEL" replicate "${K[@]}" --name x vm.raw $URL
expect_err "wrong access key: clear error" "access denied" \
	env AWS_ACCESS_KEY_ID=NOPE "$KEEL" restore "${K[@]}" "$URL@night1" -O raw x.raw
expect_err "missing bucket: clear error" "does not exist" \
	keel replicate "${K[@]}" --name x vm.raw s3://keel-no-such-bucket/p
expect_err "no repository at a prefix: clear error" "not a keel repository" \
	keel restore "${K[@]}" s3://keel-test/empty@x -O raw x.raw
printf 'wrong\n' >wrongpass
expect_err "wrong passphrase: clear error" "wrong passphrase" \
	keel restore --key-file wrongpass "$URL@night1" -O raw x.raw
# setsid: no controlling terminal, so keel cannot prompt (and never hangs here)
expect_err "no passphrase and no terminal: clear error" "key" \
	setsid -w "$KEEL" restore "$URL@night1" -O raw x.raw </dev/null
expect_err "unreachable endpoint: clear error" "connect" \
	keel restore "${K[@]}" --retries 1 --endpoint http://127.0.0.1:1 "$URL@night1" -O raw x.raw
t "no output left behind by failed restores" test ! -e x.raw

faultproxy --fail-every 3 --drop-every 5 --cut-every 7
FL=http://127.0.0.1:$FP_PORT
mkstate s4.raw 4 s3.raw
t "flaky endpoint (503, dropped, cut): replicate retries to success" \
	keel replicate "${K[@]}" --endpoint $FL --name flaky --output json s4.raw $URL
cp "$TMP/.out" flaky.json
echo "# flaky replicate: $(J flaky.json 'd["requests"]["retries"]') retries; proxy: $(awk '{print $2}' "$FP_LOG" | sort | uniq -c | tr '\n' ' ')"
t "flaky endpoint: retries happened" test "$(J flaky.json 'd["requests"]["retries"] > 0')" = True
rm -f s4.out
t "flaky endpoint: restore retries to a byte-identical image" sh -c \
	"'$KEEL' restore --key-file '$W/pass' --endpoint $FL $URL@flaky -O raw s4.out && cmp s4.raw s4.out"

# a store that goes down part-way: one pack and its index go through, then only 503s
faultproxy --fail-puts-after 2
mkstate s5.raw 5 s4.raw
python3 -c 'import random; open("s5.raw","r+b").write(random.Random(5).randbytes(16 << 20))'
expect_err "failing endpoint: gives up with a clear error" "503.*gave up after 3 attempts" \
	keel replicate "${K[@]}" --retries 2 --connections 2 --endpoint http://127.0.0.1:$FP_PORT \
	--name down s5.raw $URL
t "failing endpoint: no half-visible snapshot" sh -c \
	"! '$KEEL' restore --list --key-file '$W/pass' $URL | grep -q '^down '"
expect_err "failing endpoint: the snapshot does not restore" "no snapshot 'down'" \
	keel restore "${K[@]}" "$URL@down" -O raw down.raw
t "failing endpoint: a later run completes it" keel replicate "${K[@]}" --name down s5.raw $URL
rm -f down.raw
t "failing endpoint: then it restores byte-identical" sh -c \
	"'$KEEL' restore --key-file '$W/pass' $URL@down -O raw down.raw && cmp s5.raw down.raw"

# ------------------------------------------------------------------ virtual-host addressing
V="--endpoint http://localhost:$S3_PORT --addressing virtual"
if [ -z "${KEEL_S3_TEST_ENV:-}" ]; then
	t "virtual-host addressing: replicate" keel replicate "${K[@]}" $V --name v1 s1.raw s3://keel-vhost/v
	rm -f v1.raw
	t "virtual-host addressing: restore byte-identical" sh -c \
		"'$KEEL' restore --key-file '$W/pass' $V s3://keel-vhost/v@v1 -O raw v1.raw && cmp s1.raw v1.raw"
fi

# ------------------------------------------------------------------ plaintext never stored
rm -rf objs
t "download every object in the bucket" s3_fetch_all keel-test objs
t "no object holds a 64-byte run of image plaintext" python3 - objs s1.raw s3.raw <<'PY'
import os, random, sys
d, imgs = sys.argv[1], sys.argv[2:]
marker = b"KEEL-S3-PLAINTEXT-MARKER-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
needles = [marker[:64], marker[10:74]]
r = random.Random(1)
for img in imgs:
    data = open(img, "rb").read()
    for _ in range(200):
        off = r.randrange(0, len(data) - 64)
        w = data[off:off + 64]
        if w.count(0) < 8:  # skip zero-ish windows
            needles.append(w)
blobs = [open(os.path.join(d, f), "rb").read() for f in os.listdir(d)]
print("%d objects, %d bytes, %d needles" % (len(blobs), sum(map(len, blobs)), len(needles)))
assert len(blobs) > 10
for n in needles:
    for b in blobs:
        if n in b:
            sys.exit("plaintext found in an object")
PY
t "object names leak nothing (only config, data/, index/, snapshots/, gc/)" sh -c \
	"! ls objs | grep -v -E '^(vms_vm1|gc|vault)_(config|data_[0-9a-f]{2}_[0-9a-f]{64}|index_[0-9a-f]{64}|snapshots_[0-9a-f]{64}|gc_[0-9]{20}-[0-9a-f]{8})$'"

# ------------------------------------------------------------------ damage found by scrub
D=s3://keel-test/dmg
t "damage: replicate" keel replicate "${K[@]}" --name d1 s1.raw $D
t "damage: scrub passes before" keel scrub "${K[@]}" $D
pk=$(s3_keys keel-test dmg/data/ | head -n 1)
s3curl -f "$S3_ENDPOINT/keel-test/$pk" -o pack.bin
python3 -c 'import sys; b=bytearray(open("pack.bin","rb").read()); b[len(b)//2]^=1; open("pack.bad","wb").write(b)'
s3curl -f -X PUT --data-binary @pack.bad "$S3_ENDPOINT/keel-test/$pk" -o /dev/null
expect_rc 3 "damage: scrub exits 3 on a flipped bit" keel scrub "${K[@]}" $D
cp "$TMP/.out" dmg1.out
sed 's/^/# /' dmg1.out | head -n 3
t "damage: scrub names the pack" grep -q "damage: ${pk#dmg/}.*chunk" dmg1.out
expect_err "damage: restore fails naming the damage" "authentication failed" \
	keel restore "${K[@]}" "$D@d1" -O raw dmg.raw
t "damage: no output left" test ! -e dmg.raw
mk=$(s3_keys keel-test dmg/snapshots/ | head -n 1)
s3curl -f -X PUT --data-binary @pack.bad "$S3_ENDPOINT/keel-test/$mk" -o /dev/null
expect_rc 3 "damage: scrub exits 3 on a replaced manifest" keel scrub "${K[@]}" $D
cp "$TMP/.out" dmg2.out
sed 's/^/# /' dmg2.out | head -n 3
t "damage: scrub names the manifest" grep -q "damage:.*${mk#dmg/}" dmg2.out

finish
