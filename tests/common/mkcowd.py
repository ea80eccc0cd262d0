# tests/common/mkcowd.py OUT CAPACITY_SECTORS GRAIN_SECTORS SEED: a vmfsSparse
# (COWD) extent, the ESXi snapshot delta nothing on this machine can write:
# the 2048-byte header, the grain directory, grain tables, then 40 random
# grains of random bytes in shuffled order (as a guest writes them).
# qemu-img reads these through a descriptor and is the judge of keel.
import random, struct, sys
out, cap, grain, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r = random.Random(seed)
gtes = 4096
ngd = -(-cap // (gtes * grain))
ngrains = -(-cap // grain)
chosen = sorted(r.sample(range(ngrains), min(ngrains, 40)))
gd_sec = 4
gd_secs = -(-ngd * 4 // 512)
gts = sorted({g // gtes for g in chosen})
gt_sec = {}
nxt = gd_sec + gd_secs
for t in gts:
    gt_sec[t] = nxt; nxt += gtes * 4 // 512
data = {}
order = chosen[:]; r.shuffle(order)  # grains land in write order, not offset order
gte = {}
for g in order:
    gte[g] = nxt; data[nxt] = r.randbytes(grain * 512); nxt += grain
f = open(out, 'wb')
hdr = bytearray(2048); hdr[0:4] = b'COWD'
struct.pack_into('<IIIIIII', hdr, 4, 1, 3, cap, grain, gd_sec, ngd, nxt)
f.write(hdr)
gd = [0] * ngd
for t in gts: gd[t] = gt_sec[t]
f.seek(gd_sec * 512); f.write(struct.pack('<%dI' % ngd, *gd))
for t in gts:
    ent = [0] * gtes
    for g in chosen:
        if g // gtes == t: ent[g % gtes] = gte[g]
    f.seek(gt_sec[t] * 512); f.write(struct.pack('<%dI' % gtes, *ent))
for sec, b in data.items():
    f.seek(sec * 512); f.write(b)
f.truncate(nxt * 512)
