#!/usr/bin/env bash
# tests/fuzz/corpus.d/luks.sh OUTDIR WORKDIR - seeds for fuzz_luks: the LUKS
# header areas of qcow2 images qemu-img encrypts with the passphrase
# "fuzzpass", and small LUKS volumes (qemu-img -f luks), in the AES modes
# whose key material fits libFuzzer's 1 MiB inputs (16- and 32-byte keys).
# Without qemu-img: no seeds (the target then starts from nothing).
set -eu
out=$1/luks w=$2/luks
mkdir -p "$out" "$w"
command -v qemu-img >/dev/null || exit 0
printf 'fuzzpass' >"$w/pw"
n=0
for o in encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.ivgen-hash-alg=sha256 \
	encrypt.cipher-alg=aes-128,encrypt.cipher-mode=ecb,encrypt.hash-alg=sha1 \
	encrypt.cipher-alg=aes-128,encrypt.cipher-mode=xts,encrypt.ivgen-alg=plain64; do
	n=$((n + 1))
	# iter-time 1 ms keeps PBKDF2 under fuzz_luks's cap; qemu-img's timing
	# of it now and then fails, so try again (a failed try can leave a
	# half-made file: success is the exit status, not the file)
	ok=""
	for try in 1 2 3 4 5 6 7 8; do
		rm -f "$w/s.qcow2"
		qemu-img create -q -f qcow2 --object secret,id=s0,file="$w/pw" \
			-o "cluster_size=4096,encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=1,$o" \
			"$w/s.qcow2" 64K 2>/dev/null && ok=1 && break
		sleep 1
	done
	[ -n "$ok" ] || continue
	python3 - "$w/s.qcow2" "$out/seed-$n.luks" <<'PY'
import struct, sys
f = open(sys.argv[1], 'rb'); h = f.read(4096)
p = struct.unpack('>I', h[100:104])[0]
while True:
    t, l = struct.unpack('>II', h[p:p + 8])
    if t == 0x0537BE77:
        off, ln = struct.unpack('>QQ', h[p + 8:p + 24]); break
    if t == 0: sys.exit("no LUKS header extension")
    p += 8 + (l + 7) // 8 * 8
f.seek(off); open(sys.argv[2], 'wb').write(f.read(ln))
PY
done
# whole volumes: a 16-byte key leaves room for a payload under 1 MiB
for o in cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain64 cipher-alg=aes-128,cipher-mode=ecb; do
	n=$((n + 1))
	ok=""
	for try in 1 2 3 4 5 6 7 8; do
		rm -f "$w/v.luks"
		qemu-img create -q -f luks --object secret,id=s0,file="$w/pw" \
			-o "key-secret=s0,iter-time=1,$o" "$w/v.luks" 16K 2>/dev/null && ok=1 && break
		sleep 1
	done
	[ -n "$ok" ] || continue
	qemu-io --object secret,id=s0,file="$w/pw" --image-opts -c "write -P 0x61 512 3000" \
		"driver=luks,file.filename=$w/v.luks,key-secret=s0" >/dev/null
	cp "$w/v.luks" "$out/seed-$n.luks"
done
