# tests/common/mksesparse.py OUT CAPACITY_SECTORS SEED: a seSparse extent, the
# VMFS 6 snapshot delta nothing on this machine writes, in the layout qemu's
# reader checks (block/vmdk.c): constant header, volatile header, an empty
# journal, the grain directory, grain tables, then 4 KiB grains. 60 random
# grains get data (in shuffled order, as a guest writes), 8 are zero and 8
# unmapped (both read as zeros over a parent). qemu-img is the judge.
import random, struct, sys
out, cap, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
GTES, GRAIN = 4096, 8  # entries per table, sectors per grain
ngrains = -(-cap // GRAIN)
ngd = -(-ngrains // GTES)
picked = r.sample(range(ngrains), min(ngrains, 76))
data_g, zero_g, unmap_g = picked[:60], picked[60:68], picked[68:76]
gts = sorted({g // GTES for g in picked})
gd_off, gd_secs = 16, -(-ngd * 8 // 512)
gt_off = gd_off + gd_secs
gt_secs = len(gts) * 64
grains_off = gt_off + gt_secs + 8  # free bitmap and back map (empty) in between
order = data_g[:]; r.shuffle(order)
gidx = {g: i for i, g in enumerate(order)}
hdr = struct.pack('<26Q', 0xcafebabe, 0x200000001, cap, GRAIN, 64, 0, 0, 0, 0, 0,
                  1, 1, 2, 1, 3, 8, gd_off, gd_secs, gt_off, gt_secs,
                  gt_off + gt_secs, 4, gt_off + gt_secs + 4, 4, grains_off, len(order) * GRAIN)
f = open(out, 'wb')
f.write(hdr.ljust(512, b'\0'))
f.write(struct.pack('<4Q', 0xcafecafe, len(gts), 1, 0).ljust(512, b'\0'))
gd = [0] * ngd
for i, t in enumerate(gts):
    gd[t] = 0x1000000000000000 | i
f.seek(gd_off * 512); f.write(struct.pack('<%dQ' % ngd, *gd))
for i, t in enumerate(gts):
    ent = [0] * GTES
    for g in picked:
        if g // GTES != t:
            continue
        if g in gidx:
            n = gidx[g]
            ent[g % GTES] = 0x3000000000000000 | ((n & 0xfff) << 48) | (n >> 12)
        else:
            ent[g % GTES] = 0x2000000000000000 if g in zero_g else 0x1000000000000000
    f.seek((gt_off + i * 64) * 512); f.write(struct.pack('<%dQ' % GTES, *ent))
for g in order:
    f.seek((grains_off + gidx[g] * GRAIN) * 512); f.write(r.randbytes(GRAIN * 512))
f.truncate((grains_off + len(order) * GRAIN) * 512)
