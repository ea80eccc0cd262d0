#!/usr/bin/env bash
# keel backup of the 8 nightly versions of a 2 GiB disk into one vault (dedup +
# zstd, and again encrypted) versus borg (repokey-blake2, zstd,3) and restic
# on the same files: full time, median nightly time, stored bytes after all 8.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nightlies.sh"
ensure_nightlies || exit 0
d=$BENCH_DIR/backup
rm -rf "$d"; mkdir -p "$d"
printf 'bench-passphrase' > "$d/pass"
export BORG_PASSPHRASE=bench-passphrase RESTIC_PASSWORD=bench-passphrase
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

run_tool() { # run_tool NAME CMD-TEMPLATE (NIGHT replaced by the file, N by the number)
	local name=$1 tmpl=$2 total=0 times=()
	for n in 0 1 2 3 4 5 6 7; do
		local f="$NIGHTS_DIR/night$n.raw" cmd=${tmpl//NIGHT/$NIGHTS_DIR/night$n.raw}
		cmd=${cmd//@N@/$n}
		# every tool starts with the night in the page cache: the first
		# tool to run would otherwise pay the disk reads for all of them
		cat "$f" >/dev/null
		timeit t bash -c "$cmd" || return 1
		times+=("$t")
		total=$(echo "$total + $t" | bc -l)
	done
	local median=$(printf '%s\n' "${times[@]:1}" | median)
	eval "${name}_total=$total ${name}_median=$median ${name}_first=${times[0]}"
}

run_tool keel "'$KEEL' -q backup --name n@N@ NIGHT '$d/vault.keel'"
keel_bytes=$(stat -c %s "$d/vault.keel")
run_tool keelenc "'$KEEL' -q backup -o encrypt=on --key-file '$d/pass' --name n@N@ NIGHT '$d/vault-enc.keel'"
keelenc_bytes=$(stat -c %s "$d/vault-enc.keel")
have_borg=0; have_restic=0
if command -v borg >/dev/null; then
	borg init --encryption=repokey-blake2 "$d/borg" >/dev/null 2>&1 && have_borg=1
	[ $have_borg = 1 ] && run_tool borg "cd '$NIGHTS_DIR' && borg create --compression zstd,3 '$d/borg::n@N@' night@N@.raw"
	borg_bytes=$(du -sb "$d/borg" | cut -f1)
fi
if command -v restic >/dev/null; then
	restic init -q --repo "$d/restic" >/dev/null 2>&1 && have_restic=1
	[ $have_restic = 1 ] && run_tool restic "cd '$NIGHTS_DIR' && restic -q --repo '$d/restic' backup night@N@.raw"
	restic_bytes=$(du -sb "$d/restic" | cut -f1)
fi
row "8 nightly 2 GiB disks" "first (s)" "median (s)" "stored"
row "keel backup (dedup, zstd)" "$keel_first" "$keel_median" "$(numfmt --to=iec $keel_bytes)"
row "keel backup (dedup, zstd, encrypted)" "$keelenc_first" "$keelenc_median" "$(numfmt --to=iec $keelenc_bytes)"
[ $have_borg = 1 ] && row "borg (repokey-blake2, zstd,3)" "$borg_first" "$borg_median" "$(numfmt --to=iec $borg_bytes)"
[ $have_restic = 1 ] && row "restic" "$restic_first" "$restic_median" "$(numfmt --to=iec $restic_bytes)"
echo
[ $have_borg = 1 ] && echo "nightly time keel/borg: $(ratio $keel_median $borg_median) (encrypted: $(ratio $keelenc_median $borg_median)); goal <= 0.2"
[ $have_restic = 1 ] && echo "nightly time keel/restic: $(ratio $keel_median $restic_median)"
echo "stored bytes keel: $keel_bytes (casync reference: 1.08 GiB = 1159641169)"
"$KEEL" scrub "$d/vault.keel" | tail -1
rm -rf "$d"
