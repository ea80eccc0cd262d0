#!/usr/bin/env bash
# tests/interop/test_convert_matrix.sh - every source format x every target
# format `keel help formats` lists as creatable, on patterned images with
# holes, zero runs and odd sizes. Sources are made by qemu-img where it
# writes the format (so keel's reader meets a foreign writer), else by keel.
# Each result is compared with qemu-img compare (keel compare where qemu
# lacks the format) and checked with qemu-img check where qemu checks it.
. "$(dirname "$0")/../shell/lib.sh"
command -v qemu-img >/dev/null || skip "qemu-img not installed"
cd "$TMP"

# keel format name -> qemu-img driver name ("" = qemu has none)
qname() {
	case $1 in
	raw | qcow2 | vmdk | vhdx | vdi) echo "$1" ;;
	vhd) echo vpc ;;
	*) echo "" ;;
	esac
}
qcheck() { case $1 in qcow2 | vmdk | vhdx | vdi) return 0 ;; *) return 1 ;; esac; }
# options qemu-img needs to write a source of this format with an exact size
qopts() {
	case $1 in
	vhd) echo "-o subformat=dynamic,force_size=on" ;;
	*) echo "" ;;
	esac
}

targets=$(keel help formats | awk 'NR > 1 && $2 == "yes" { print $1 }')
[ -n "$targets" ] || skip "no creatable formats"
echo "# targets: $targets"

# sizes: a sector multiple that is no cluster multiple, and a small odd one
sizes="$((8 * 1048576 + 512 * 25)) $((1048576 + 512 * 7))"
n=0
for size in $sizes; do
	n=$((n + 1))
	pattern_file "p$n.raw" "$size"
	for s in $targets; do
		src="s$n.$s"
		q=$(qname "$s")
		if [ "$s" = raw ]; then
			cp --sparse=always "p$n.raw" "$src"
		elif [ -n "$q" ] && qemu-img convert -f raw -O "$q" $(qopts "$s") "p$n.raw" "$src" 2>/dev/null; then
			:
		else
			keel convert -f raw -O "$s" "p$n.raw" "$src" >/dev/null 2>&1 ||
				{ bad "make source $src"; continue; }
		fi
		for d in $targets; do
			dst="o$n.$s.$d"
			if ! keel convert -f "$s" -O "$d" "$src" "$dst" >"$TMP/.conv" 2>&1; then
				bad "convert $s -> $d (size $size)"
				sed 's/^/    # /' "$TMP/.conv"
				continue
			fi
			qd=$(qname "$d")
			if [ -n "$qd" ]; then
				t "$s -> $d (size $size): qemu-img compare" \
					qemu-img compare -q -f raw -F "$qd" "p$n.raw" "$dst"
			else
				t "$s -> $d (size $size): keel compare" keel compare "p$n.raw" "$dst"
			fi
			if qcheck "$d"; then
				t "$s -> $d (size $size): qemu-img check" qemu-img check -q -f "$qd" "$dst"
			fi
			rm -f "$dst"
		done
	done
done

# a chain source (a qemu-made qcow2 overlay over a base) flattens into every target
if [ -f s1.qcow2 ]; then
	cp --sparse=always p1.raw new.raw
	printf 'overlay data' | dd of=new.raw bs=1 seek=4096 conv=notrunc status=none
	dd if=/dev/zero of=new.raw bs=65536 seek=20 count=3 conv=notrunc status=none
	qemu-img convert -f raw -O qcow2 -B s1.qcow2 -F qcow2 new.raw top.qcow2
	for d in $targets; do
		keel convert -O "$d" top.qcow2 "flat.$d" >/dev/null 2>&1
		t "qcow2 chain -> $d flattened" keel compare new.raw "flat.$d"
	done
fi
finish
