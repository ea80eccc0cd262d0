#!/usr/bin/env bash
# tests/shell/test_opts_help.sh - `-o help` (keel create -f FMT, keel convert
# -O FMT, keel measure -O FMT) lists each output format's -o keys, and every
# key it lists is real: creating an image (or package) with the key set to
# the first value the help shows succeeds. A key the help invents, misspells
# or gives a wrong value range for fails here. Also: every help text (keel
# help CMD, keel help formats, each -o help) fits an 80-column terminal, and
# start-up loads none of the libraries keel loads on first use.
. "$(dirname "$0")/lib.sh"

# libarchive, libxml2 (with ICU) and libcurl are loaded when a command needs
# them (lib/lazy.c, replicate/s3-http.c): linked, they were 27 of the 33 ms
# every keel command took to start. The OVA, GCE and S3 suites then prove
# the loaded libraries work.
for lib in libarchive libxml2 libcurl libicu; do
	t "keel does not link $lib" sh -c "! ldd '$KEEL' | grep -q '$lib'"
done
# ... and opens the soname the build's dev library carries, which is the
# ABI its headers describe (libxml2 2.14 changed it), not a guess
for lib in archive xml2 curl; do
	so=$(readelf -d "$(${CC:-cc} -print-file-name=lib$lib.so)" 2>/dev/null |
		sed -n 's/.*soname: \[\(.*\)\]/\1/p')
	if [ -z "$so" ]; then
		echo "SKIP: no dev library for lib$lib to read a soname from"
		continue
	fi
	t "keel loads $so" sh -c "strings '$KEEL' | grep -qxF '$so'"
done

cd "$TMP"
pattern_file src.raw $((3 * 1024 * 1024))
export OPTS_HELP_KEY=correct-horse-battery
creatable=$(keel help formats | awk 'NR > 1 && $2 == "yes" { print $1 }')
packages="ova gce"

# first_value KEY=VALUES -> a value the help says the key takes
first_value() {
	local v=${1#*=}
	[ "$v" = "$1" ] && { echo on; return; } # a bare flag: "azure"
	v=${v%%|*}
	v=${v%%..*}
	case $v in
	N) echo 4 ;;
	NAME) echo x ;;
	MiB) echo 512 ;;
	MS) echo 10 ;;
	*) echo "$v" ;;
	esac
}
# keys HELPFILE -> the KEY=VALUES (or bare KEY) words that start an entry
keys() { awk '/^  [a-z_0-9]/ { print $1 }' "$1"; }

for f in $creatable; do
	t "create -f $f -o help lists options" keel create -f "$f" -o help
	keel create -f "$f" -o help >"help.$f" 2>&1
	t "create -f $f -o help = convert -O $f -o help" \
		cmp "help.$f" <(keel convert -O "$f" -o help 2>&1)
	n=0
	for kv in $(keys "help.$f"); do
		k=${kv%%=*} v=$(first_value "$kv")
		n=$((n + 1))
		rm -f "o.$f"
		# encryption needs a key, given the way scripts give it; qcow2's
		# LUKS keys go together (and with 10 ms of PBKDF2, not 2 s)
		key=() extra=""
		case $k in
		encrypt) key=(--key-env OPTS_HELP_KEY) ;;
		encrypt.format) key=(--key-env OPTS_HELP_KEY) extra=",encrypt.iter-time=10" ;;
		encrypt.*) key=(--key-env OPTS_HELP_KEY) extra=",encrypt.format=luks" ;;
		esac
		t "create -f $f -o $k=$v (a key its help lists)" \
			keel create -f "$f" -o "$k=$v$extra" "${key[@]}" "o.$f" 4M
	done
	t "$f's help lists at least one key ($n)" test "$n" -ge 1
done
for p in $packages; do
	keel convert -O "$p" -o help >"help.$p" 2>&1
	t "convert -O $p -o help lists options" grep -q "^  [a-z]" "help.$p"
	t "measure -O $p -o help = convert's" cmp "help.$p" <(keel measure -O "$p" -o help 2>&1)
	for kv in $(keys "help.$p"); do
		k=${kv%%=*} v=$(first_value "$kv")
		rm -f "o.$p"
		t "convert -O $p -o $k=$v (a key its help lists)" \
			keel convert -O "$p" -o "$k=$v" src.raw "o.$p"
	done
done
# 80 columns
wide() { awk -v w="$1" 'length > 80 { print w ": " length ": " $0 }'; }
cmds=$(keel help | awk '/^  [a-z]/ { print $1 }')
t "keel help lists the commands ($(echo $cmds | wc -w))" test "$(echo $cmds | wc -w)" -ge 20
: >wide.out
for c in $cmds formats; do keel help "$c" | wide "$c" >>wide.out; done
for f in $creatable $packages; do wide "-o help $f" <"help.$f" >>wide.out; done
keel help | wide "keel help" >>wide.out
t "every help text fits 80 columns" test ! -s wide.out
cat wide.out
expect_rc 2 "create -o help of a package is a usage error" keel create -f ova -o help
expect_rc 2 "create -o help of an unknown format is a usage error" keel create -f nope -o help
expect_rc 2 "convert -o help without -O is a usage error" keel convert -o help a b
expect_rc 1 "an unknown key is still refused" keel create -f qcow2 -o no_such_key=1 u.qcow2 1M
finish
