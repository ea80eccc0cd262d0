#!/usr/bin/env bash
# tests/fuzz/corpus.d/gce.sh OUTDIR WORKDIR - seeds for fuzz_gce: a small
# sparse disk.raw in each tar dialect GNU tar writes and in keel's -O gce,
# each as the file itself (selector byte 0) and, ungzipped, as a tar the
# target compresses (selector byte 128).
set -eu
mkdir -p "$1/gce" "$2/gce/src"
out=$(cd "$1/gce" && pwd)
w=$(cd "$2/gce" && pwd)
: "${KEEL:=$PWD/build/keel}"
cd "$w/src"
truncate -s 96K disk.raw
head -c 4096 /dev/urandom | dd of=disk.raw bs=4096 seek=2 conv=notrunc status=none
printf 'tail' | dd of=disk.raw bs=1 seek=$((96 * 1024 - 4)) conv=notrunc status=none
n=0
seed() { # FILE: both shapes
	{ printf '\0'; cat "$1"; } >"$out/seed$n"
	if gzip -t "$1" 2>/dev/null; then
		{ printf '\200'; gzip -dc "$1"; } >"$out/seed$n.tar"
	else
		{ printf '\200'; cat "$1"; } >"$out/seed$n.tar"
	fi
	n=$((n + 1))
}
for f in oldgnu gnu posix; do
	tar --format=$f -Sczf "../$f.tar.gz" disk.raw
	seed "../$f.tar.gz"
done
tar --format=posix --sparse-version=0.1 -Sczf ../pax01.tar.gz disk.raw
seed ../pax01.tar.gz
tar --format=ustar -czf ../ustar.tar.gz disk.raw
seed ../ustar.tar.gz
tar --format=oldgnu -Scf ../plain.tar disk.raw
seed ../plain.tar
echo notes >notes.txt
tar -czf ../two.tar.gz notes.txt disk.raw
seed ../two.tar.gz
"$KEEL" convert -O gce -f raw disk.raw ../keel.tar.gz >/dev/null
seed ../keel.tar.gz
