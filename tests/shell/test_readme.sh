#!/usr/bin/env bash
# tests/shell/test_readme.sh - the README's examples name commands and
# options that exist. Every `keel CMD ...` line in a README code block
# (continuation lines joined, comments and pipes cut) must name a command
# that `keel help CMD` knows, and every option it passes must appear in
# that help text; a `-o key=...` list for a format (create -f FMT,
# convert/measure -O FMT) must use keys that `-o help` lists for it; and
# every command `keel help` lists must have a README heading of its own.
# Catches an option renamed or dropped in the code but not in the README.
. "$(dirname "$0")/lib.sh"

readme=$ROOT/README.md
[ -f "$readme" ] || skip "no README.md at $ROOT"

# the README's keel command lines, one per line
awk '
	/^```/ { inblock = !inblock; next }
	!inblock { next }
	{
		line = (cont != "" ? cont " " : "") $0
		if (line ~ /\\$/) { sub(/\\$/, "", line); cont = line; next }
		cont = ""
		print line
	}' "$readme" | tr '|' '\n' | sed 's/ #.*//; s/^ *//; s/^sudo //' | grep '^keel ' >"$TMP/lines"
n=$(wc -l <"$TMP/lines")
[ "$n" -ge 50 ] && ok "found $n keel command lines in the README" || bad "only $n keel lines found in the README"

help_of() { # help_of CMD: cached
	local f=$TMP/help.$1
	[ -f "$f" ] || "$KEEL" help "$1" >"$f" 2>&1 || echo "NO-HELP" >"$f"
	cat "$f"
}
opts_of() { # opts_of create|convert FMT: the -o keys, cached
	local f=$TMP/opts.$1.$2
	if [ ! -f "$f" ]; then
		if [ "$1" = create ]; then "$KEEL" create -f "$2" -o help >"$f" 2>&1
		else "$KEEL" "$1" -O "$2" -o help >"$f" 2>&1; fi
	fi
	cat "$f"
}

# check_lines FILE: one "PROBLEM: ..." line for each unknown command,
# option or -o key in FILE's command lines
check_lines() {
	local line cmd fmt ofmt prev tok target kv k flag w keys
	while read -r line; do
		read -ra w <<<"$line"
		cmd=${w[1]:-}
		if help_of "$cmd" | grep -q NO-HELP; then
			echo "PROBLEM: '$line': keel help $cmd fails"
			continue
		fi
		# the formats first: -o may come before -f or -O on the line
		fmt="" ofmt="" prev=""
		for tok in "${w[@]:2}"; do
			case $prev in -f) fmt=$tok ;; -O) ofmt=$tok ;; esac
			prev=$tok
		done
		prev=""
		for tok in "${w[@]:2}"; do
			if [ "$prev" = -o ] && [ "$tok" != help ]; then
				# -o keys: checked against the format's own list where one is named
				target=""
				case $cmd in
				create) target=${fmt:-keel} ;;
				convert | measure) target=$ofmt ;;
				esac
				if [ -n "$target" ]; then
					IFS=, read -ra keys <<<"$tok"
					for kv in "${keys[@]}"; do
						k=${kv%%=*}
						opts_of "$cmd" "$target" | grep -qw -- "$k" ||
							echo "PROBLEM: '$line': -o $k is not among the $target options"
					done
				fi
			fi
			prev=$tok
			case $tok in
			--*) flag=${tok%%=*} ;;
			-[a-zA-Z]) flag=$tok ;;
			*) continue ;;
			esac
			help_of "$cmd" | grep -q -- "$flag\\b" ||
				echo "PROBLEM: '$line': $flag is not in keel help $cmd"
		done
	done <"$1"
}

check_lines "$TMP/lines" >"$TMP/problems"
while read -r p; do bad "README: ${p#PROBLEM: }"; done <"$TMP/problems"
[ -s "$TMP/problems" ] || ok "every README command line names commands, options and -o keys that exist"

# every command `keel help` lists has a README section of its own
missing=""
for c in $("$KEEL" help | awk '/^commands:/ { f = 1; next } f && $1 ~ /^[a-z-]+$/ { print $1 }'); do
	[ "$c" = help ] && continue
	grep -qE "^#+ .*keel $c([ ,]|$)" "$readme" || missing="$missing $c"
done
[ -z "$missing" ] && ok "every command keel help lists has a README section" ||
	bad "commands without a README section:$missing"

# the check itself finds each kind of drift
cat >"$TMP/made-up" <<'EOF2'
keel convert --no-such-option -O qcow2 a.raw b.qcow2
keel convert -O qcow2 -o no_such_key=1 a.raw b.qcow2
keel create -o subformat=fixed,bogus=on -f vhd a.vhd 1G
keel no-such-command a
keel convert -O qcow2 -o compression_type=zstd -c a.raw b.qcow2
EOF2
check_lines "$TMP/made-up" >"$TMP/found"
if [ "$(grep -c PROBLEM "$TMP/found")" -eq 4 ] && grep -q -- '--no-such-option' "$TMP/found" &&
	grep -q 'no_such_key' "$TMP/found" && grep -q 'bogus' "$TMP/found" &&
	grep -q 'no-such-command' "$TMP/found"; then
	ok "a made-up option, -o key or command is caught (and a real line is not)"
else
	bad "the drift check missed or over-reported"; sed 's/^/    # /' "$TMP/found"
fi

finish
