#!/usr/bin/env bash
# Backup vaults through the CLI: backup, dedup, encryption and key slots,
# scrub, and a backup killed part-way through.
. "$(dirname "$0")/lib.sh"
cd "$TMP"
export KEEL_PASS="vault passphrase"
printf 'vault passphrase\n' > pass
printf 'offline passphrase' > offline

pattern_file disk.raw $((32 * 1024 * 1024))
t "first backup creates the vault" sh -c "'$KEEL' backup --output json --name mon disk.raw v.keel > b1.json"
t "json summary" python3 -c "import json; d=json.load(open('b1.json')); assert d['vault_created'] and d['snapshot']=='mon' and d['new_bytes_stored']>0"
printf 'changed' | dd of=disk.raw bs=1 seek=5000000 conv=notrunc 2>/dev/null
t "second backup stores only the change" sh -c "'$KEEL' backup --output json --name tue disk.raw v.keel > b2.json && python3 -c \"import json; d=json.load(open('b2.json')); assert d['clusters_new']==1, d\""
t "snapshots hold each night" sh -c "'$KEEL' compare disk.raw v.keel@tue && ! '$KEEL' compare disk.raw v.keel@mon >/dev/null"
expect_err "same name again refused" "already has a snapshot" keel backup --name tue disk.raw v.keel
t "scrub clean" keel scrub v.keel
t "info ratios" sh -c "'$KEEL' info v.keel | grep -q 'compression ratio'"

# a backup killed at every I/O point leaves the vault as it was
cp v.keel v.orig
printf 'again' | dd of=disk.raw bs=1 seek=9000000 conv=notrunc 2>/dev/null
good=0
for n in 1 2 3 4 5 6 7 8; do
	cp v.orig v.keel
	KEEL_FAULT=torn@$n KEEL_FAULT_SEED=$n "$KEEL" -q backup --name wed disk.raw v.keel >/dev/null 2>&1
	if "$KEEL" check v.keel >/dev/null; then
		names=$("$KEEL" snapshot list --output json v.keel | python3 -c 'import json,sys; print(" ".join(s["name"] for s in json.load(sys.stdin)))')
		case "$names" in
		"mon tue") "$KEEL" compare v.orig v.keel >/dev/null && good=$((good + 1)) ;;
		"mon tue wed") "$KEEL" compare disk.raw v.keel@wed >/dev/null && good=$((good + 1)) ;;
		esac
	fi
done
t "backup killed at each I/O point: old vault or new snapshot, never a mix" test $good -eq 8

# encryption
t "encrypted vault from env key" keel -q backup -o encrypt=on --key-env KEEL_PASS --name one disk.raw e.keel
# no key: info shows the header (unverified) and data stays out of reach
t "info without a key shows the header" sh -c "'$KEEL' info e.keel 2>info.err | grep -q '^encryption: aes-256-gcm, locked' && grep -q 'no key was given' info.err"
t "info json without a key: locked, size, one key slot" sh -c "'$KEEL' info --output json e.keel | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"locked\"] and d[\"virtual_size\"]==$(stat -c %s disk.raw) and d[\"details\"][\"key slots in use\"]==\"1\" and d[\"snapshots\"]==[]'"
expect_err "no key: a snapshot needs it" "a key is needed" keel info e.keel@one
expect_err "no key: reading needs it" "a key is needed" keel compare disk.raw e.keel
keel -q create -f keel -b e.keel -F keel --key-file pass plainchild.keel >/dev/null
expect_err "no key: a plain child of an encrypted parent names the parent's need" \
	"e.keel is encrypted: a key is needed" keel info plainchild.keel
cp e.keel e.bad
kcry=$(python3 -c 'import sys; b=open("e.bad","rb").read(); print(next(o for o in range(0, len(b), 4096) if b[o:o+4]==b"KCRY"))')
printf '\x07' | dd of=e.bad bs=1 seek=$((kcry + 100)) conv=notrunc 2>/dev/null
expect_err "no key, damaged key-slot table: a clear error" "key-slot table at offset $kcry fails its checksum" keel info e.bad
expect_err "wrong key" "wrong passphrase" sh -c "KEEL_PASS=nope '$KEEL' info --key-env KEEL_PASS e.keel"
t "right key reads" keel compare --key-file pass disk.raw e.keel@one
t "no plaintext run in the encrypted vault" python3 - disk.raw e.keel <<'PY'
import sys
src, img = open(sys.argv[1], 'rb').read(), open(sys.argv[2], 'rb').read()
for off in range(0, len(src) - 64, 1 << 20):
    w = src[off:off + 64]
    if w != bytes(64) and w in img:
        sys.exit("plaintext found at %d" % off)
PY
t "add an offline key" keel -q key add e.keel --key-file pass --new-key-file offline
t "offline key opens it" keel compare --key-file offline disk.raw e.keel@one
t "key list" sh -c "'$KEEL' key list --output json --key-file pass e.keel | python3 -c 'import json,sys; assert len(json.load(sys.stdin))==2'"
t "remove the first slot" keel -q key remove e.keel --key-file offline --slot 0
expect_err "removed key refused" "wrong passphrase" keel info --key-file pass e.keel
expect_err "last slot kept" "last key slot" keel key remove e.keel --key-file offline --slot 1
t "scrub encrypted" keel scrub --key-file offline e.keel
off=$("$KEEL" map --output json --key-file offline e.keel | python3 -c 'import json,sys; print([e for e in json.load(sys.stdin) if e["type"]=="data"][3]["offset"])')
printf '\x01' | dd of=e.keel bs=1 seek=$((off + 77)) conv=notrunc 2>/dev/null
expect_rc 3 "scrub finds a flipped bit" keel scrub --key-file offline e.keel
t "scrub json names the damage" sh -c "'$KEEL' scrub --output json --key-file offline e.keel | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"damaged_clusters\"]==1 and any(x[\"snapshot\"]==\"one\" for x in d[\"damage\"]) and any(x[\"current\"] for x in d[\"damage\"])'"

# offline dedup
keel -q create -o compression=none,cluster_size=64K dd.keel 8M
keel -q io -c 'write -P 0x77 0 4M' dd.keel
t "offline dedup" keel -q dedup dd.keel
t "dedup kept the data" keel -q io -c 'read -P 0x77 0 4M' dd.keel
t "dedup gave the space back" sh -c "[ \$(du -k dd.keel | cut -f1) -lt 1000 ]"
t "check after dedup" keel check --verify-data dd.keel

# a raw disk whose size is not whole sectors: the vault pads it with zeros
head -c $((3 * 1048576 + 777)) /dev/urandom >odd.raw
t "backup of an odd-sized raw disk" keel -q backup --name a odd.raw odd.keel
t "a second night of it" keel -q backup --name b odd.raw odd.keel
t "restore of it" keel -q restore --verify odd.keel@a odd.out
t "restored bytes = the disk" cmp -n $((3 * 1048576 + 777)) odd.raw odd.out
t "padded to whole sectors with zeros" sh -c "[ \$(stat -c %s odd.out) -eq $((3 * 1048576 + 1024)) ] && [ \$(tail -c 247 odd.out | tr -d '\\000' | wc -c) -eq 0 ]"
# a 4 TiB disk with 3 MiB of data: a backup costs its data, not its size
# (window by window it took 270 s; timeout is a hang guard). The second
# night zeroes a range the vault holds: it must read as zeros there.
keel -q create -f qcow2 huge.qcow2 4T
keel -q io -c "write -P 1 0 1M" -c "write -P 2 2T 1M" -c "write -P 3 4095G 1M" huge.qcow2
t "4 TiB sparse: backup" timeout 120 "$KEEL" -q backup --name n1 huge.qcow2 huge.keel
keel -q io -c "write -z 2T 1M" -c "write -P 4 3T 64k" huge.qcow2
t "4 TiB sparse: second backup" timeout 120 "$KEEL" -q backup --name n2 huge.qcow2 huge.keel
t "4 TiB sparse: n2 is the disk" timeout 120 "$KEEL" -q compare huge.qcow2 huge.keel@n2
t "4 TiB sparse: n2 reads zeros where n1 had data" \
	keel -q io -c "read -P 0 2T 1M" -c "read -P 4 3T 64k" huge.keel@n2
t "4 TiB sparse: n1 kept its data" keel -q io -c "read -P 2 2T 1M" -c "read -P 0 3T 64k" huge.keel@n1
t "4 TiB sparse: vault check" keel -q check huge.keel
rm -f huge.qcow2 huge.keel

finish
