#!/usr/bin/env bash
# The nightly job and the drill: prune over faked times, restore to every
# creatable format with --verify, drill (restore + scrub; boot when the
# appliance can run), writer locking, concurrent jobs, and the systemd
# service's ExecStart line run as systemd would.
. "$(dirname "$0")/lib.sh"
cd "$TMP"
pattern_file disk.raw $((8 * 1024 * 1024))

# --- prune: 40 snapshots over 40 days (faked clock), against a keep-set computed here
t0=$(date -u -d 2026-09-01T02:00:00Z +%s)
KEEL_FAKE_TIME=$t0 "$KEEL" -q backup --name d00 disk.raw v.keel
for i in $(seq 1 39); do
	printf "night $i" | dd of=disk.raw bs=1 seek=$((i * 100000)) conv=notrunc 2>/dev/null
	KEEL_FAKE_TIME=$((t0 + i * 86400 + (i % 3) * 3600)) "$KEEL" -q backup --name "d$(printf %02d $i)" disk.raw v.keel || bad "backup $i"
done
t "prune dry run lists" sh -c "'$KEEL' prune --dry-run --keep-daily 5 --keep-weekly 3 --output json v.keel > dry.json"
t "dry run deleted nothing" sh -c "[ \$('$KEEL' snapshot list --output json v.keel | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') -eq 40 ]"
t "prune" sh -c "'$KEEL' prune --keep-daily 5 --keep-weekly 3 --output json v.keel > prune.json"
t "kept set matches an independent computation" python3 - v.keel "$KEEL" <<'PY'
import json, subprocess, sys, datetime
snaps = json.loads(subprocess.check_output([sys.argv[2], 'snapshot', 'list', '--output', 'json', sys.argv[1]]))
prune = json.load(open('prune.json'))
allsn = sorted(prune['snapshots'], key=lambda s: -s['date_ns'])
def day(s): return datetime.datetime.utcfromtimestamp(s['date_ns'] / 1e9).date()
def week(s): return day(s).isocalendar()[:2]
kept, want = set(), {}
for key, n in ((day, 5), (week, 3)):
    last, got = None, 0
    for s in allsn:
        p = key(s)
        if p == last: continue
        last = p
        if s['name'] in kept: continue
        kept.add(s['name']); got += 1
        if got == n: break
    if got < n and allsn[-1]['name'] not in kept: kept.add(allsn[-1]['name'])
have = {s['name'] for s in snaps}
assert have == kept, (sorted(have), sorted(kept))
assert prune['pruned'] == 40 - len(kept)
PY
t "vault clean after prune" keel check --verify-data v.keel
t "newest still restores exactly" sh -c "'$KEEL' -q restore --verify v.keel r.raw && cmp disk.raw r.raw"

# --- restore to every creatable format, verified
for fmt in $("$KEEL" help formats | awk 'NR>1 && $2=="yes" {print $1}'); do
	t "restore -O $fmt --verify" sh -c "'$KEEL' -q restore --verify -O $fmt v.keel out.$fmt && '$KEEL' compare v.keel@d39 out.$fmt"
done
expect_rc 1 "restore of a missing snapshot" keel restore v.keel@nope x.raw
t "no output left behind by the failure" test ! -e x.raw

# --- drill
t "drill without boot, json, log" sh -c "'$KEEL' drill --skip-boot --log drills.jsonl --output json v.keel > drill.json"
t "drill report fields" python3 -c "import json; d=json.load(open('drill.json')); assert d['verdict']=='pass' and d['snapshot']=='d39' and d['restore_ok'] and d['scrub_ok'] and d['recovery_point_age_s']>=0"
"$KEEL" drill --skip-boot --log drills.jsonl v.keel@d38 >/dev/null
t "drill log keeps history" sh -c "[ \$(wc -l < drills.jsonl) -eq 2 ] && python3 -c 'import json; [json.loads(l) for l in open(\"drills.jsonl\")]'"

# --- one writer at a time
keel -q create big.keel 2G
("$KEEL" -q io -c 'write -P 1 0 1536M' big.keel; echo done > big.done) &
big_ino=$(stat -c %i big.keel)
for i in $(seq 200); do grep -q "OFDLCK.*:$big_ino " /proc/locks && break; sleep 0.05; done
expect_err "second writer fails at once" "being written by another" keel io -c 'write 0 4k' big.keel
t "second writer with --wait gets its turn" keel -q io --wait -c 'write -P 2 0 4k' big.keel
wait
t "both writes landed" keel -q io -c 'read -P 2 0 4k' -c 'read -P 1 4k 1M' big.keel
# a writer killed with SIGKILL leaves no stale lock
# (wait for its lock to show in /proc/locks and reap it before probing: a
# fixed sleep raced with a slow ASan start-up and teardown in CI)
"$KEEL" -q io -c 'write -P 3 0 1536M' big.keel & kpid=$!
for i in $(seq 200); do grep -q "OFDLCK.*:$big_ino " /proc/locks && break; sleep 0.05; done
kill -9 $kpid; wait $kpid 2>/dev/null
t "lock of a killed writer is gone" keel -q io -c 'write -P 4 0 4k' big.keel
t "image fine after the killed writer" keel check big.keel
rm -f big.keel

# --- two backups and a prune at once: every reported snapshot intact
cp disk.raw disk2.raw
printf 'other' | dd of=disk2.raw bs=1 seek=12345 conv=notrunc 2>/dev/null
"$KEEL" backup --wait --output json --name c1 disk.raw v.keel > c1.json 2>c1.err & p1=$!
"$KEEL" backup --wait --output json --name c2 disk2.raw v.keel > c2.json 2>c2.err & p2=$!
"$KEEL" prune --wait --keep-last 3 v.keel > p.out 2>p.err & p3=$!
wait $p1; r1=$?; wait $p2; r2=$?; wait $p3; r3=$?
t "all three finished" test $r1 -eq 0 -a $r2 -eq 0 -a $r3 -eq 0
t "vault clean after concurrent jobs" keel check --verify-data v.keel
for n in c1 c2; do
	src=disk.raw; [ $n = c2 ] && src=disk2.raw
	if "$KEEL" snapshot list v.keel | grep -q " $n "; then
		t "snapshot $n reads as its source" keel compare $src v.keel@$n
	else
		t "snapshot $n pruned later, reported committed" grep -q '"snapshot": "'$n'"' $n.json
	fi
done

# --- the systemd unit's ExecStart, run with its EnvironmentFile
unit=$ROOT/contrib/systemd/keel-nightly@.service
mkdir -p bin
ln -sf "$ROOT/scripts/keel-nightly" bin/keel-nightly
# values in double quotes: systemd's EnvironmentFile= strips them, and sh
# (which the test sources the file with) needs them around spaces
cat > nightly.env <<ENV
KEEL_SRC=$TMP/disk.raw
KEEL_VAULT=$TMP/svc.keel
KEEL_KEEP="--keep-daily 7 --keep-weekly 4"
KEEL_DRILL_DAY=always
KEEL_DRILL_OPTS=--skip-boot
KEEL_BIN=$KEEL
ENV
exec_line=$(sed -n 's/^ExecStart=//p' "$unit" | sed "s|/usr/local/bin/|$TMP/bin/|")
t "service ExecStart runs the nightly job" env -i PATH="$PATH" sh -c "set -a; . ./nightly.env; set +a; $exec_line > svc.out 2>&1"
t "one summary line per step, no progress bars" sh -c "[ \$(wc -l < svc.out) -le 4 ] && ! grep -q \$'\\r' svc.out"
t "the vault got its snapshot and drill log" sh -c "'$KEEL' snapshot list svc.keel | grep -q '^1 ' && [ -s svc.keel.drills.jsonl ]"

# --- the same unit with an encrypted vault replicated --raw to keel serve, twice
if command -v openssl >/dev/null && bash "$ROOT/scripts/make-test-ca.sh" pki >/dev/null 2>&1; then
	mkdir -p offsite
	printf 'nightly pass' > vault.pass
	"$KEEL" serve --listen 127.0.0.1:0 --port-file port --cert pki/server.crt \
		--key pki/server.key --ca pki/ca.crt --root offsite 2>serve.log &
	SPID=$!
	for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
	TLS="--cert $TMP/pki/client.crt --key $TMP/pki/client.key --ca $TMP/pki/ca.crt"
	cat > repl.env <<ENV
KEEL_SRC=$TMP/disk.raw
KEEL_VAULT=$TMP/enc.keel
KEEL_KEY_FILE=$TMP/vault.pass
KEEL_REPLICA=keel://127.0.0.1:$(cat port)/web
KEEL_TLS_OPTS="$TLS"
KEEL_REPLICATE_OPTS=--raw
KEEL_DRILL_DAY=always
KEEL_DRILL_FROM=replica
KEEL_DRILL_OPTS=--skip-boot
KEEL_BIN=$KEEL
ENV
	"$KEEL" -q create -o encrypt=on --key-file vault.pass enc.keel 8M
	t "nightly with a keel:// replica, night 1" env -i PATH="$PATH" sh -c "set -a; . ./repl.env; set +a; $exec_line > r1.out 2>&1"
	printf 'changed' | dd of=disk.raw bs=1 seek=777777 conv=notrunc 2>/dev/null
	t "night 2: replicated incrementally" sh -c "env -i PATH=\"\$PATH\" sh -c 'set -a; . ./repl.env; set +a; $exec_line' > r2.out 2>&1 && grep -q 'from ' r2.out"
	t "the off-site copy is a raw store" test -f offsite/web/RAWSTORE
	t "the drill ran on the replica and passed" python3 -c "import json; d=json.loads(open('enc.keel.drills.jsonl').read().splitlines()[-1]); assert d['vault'].startswith('keel://127.0.0.1') and d['verdict']=='pass', d"
	t "restore from the replica equals the vault" sh -c "'$KEEL' -q restore $TLS --key-file vault.pass keel://127.0.0.1:\$(cat port)/web back.raw && '$KEEL' compare --key-file vault.pass enc.keel back.raw"
	kill $SPID 2>/dev/null; wait $SPID 2>/dev/null
else
	echo "SKIP: openssl missing: the keel:// nightly case did not run"
fi
finish
