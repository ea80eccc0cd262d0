/*
 * tests/vmm/guests/blk.c - a legacy virtio-blk driver: find 1af4:1001, set up
 * one queue, read sectors and print their CRC-32, try a write, read it back.
 */
#include "guest.h"

#define QSZ_MAX 256
static u8 ring[3 * 4096 + 8192] __attribute__((aligned(4096)));
static u8 buf[64 * 1024] __attribute__((aligned(4096)));
static u8 hdr[16];
static u8 status;
static u16 io, qsz, last_used;

static u64 req(u32 type, u64 sector, u8 *data, u32 len)
{
	u8 *desc = ring, *avail = ring + 16u * qsz;
	u64 usedoff = ((16u * qsz + 6 + 2u * qsz) + 4095) & ~4095ull;
	volatile u16 *used_idx = (volatile u16 *)(ring + usedoff + 2);
	u16 ai = *(volatile u16 *)(avail + 2);

	*(u32 *)hdr = type;
	*(u32 *)(hdr + 4) = 0;
	*(u64 *)(hdr + 8) = sector;
	status = 0xff;
	/* desc 0: header, 1: data, 2: status */
	*(u64 *)(desc + 0) = (u64)hdr; *(u32 *)(desc + 8) = 16;
	*(u16 *)(desc + 12) = 1; *(u16 *)(desc + 14) = 1;
	*(u64 *)(desc + 16) = (u64)data; *(u32 *)(desc + 24) = len;
	*(u16 *)(desc + 28) = 1 | (type == 0 ? 2 : 0); *(u16 *)(desc + 30) = 2;
	*(u64 *)(desc + 32) = (u64)&status; *(u32 *)(desc + 40) = 1;
	*(u16 *)(desc + 44) = 2; *(u16 *)(desc + 46) = 0;
	*(u16 *)(avail + 4 + 2 * (ai % qsz)) = 0;
	__asm__ volatile("" ::: "memory");
	*(volatile u16 *)(avail + 2) = (u16)(ai + 1);
	outw(io + 16, 0);
	while (*used_idx == last_used)
		;
	last_used = *used_idx;
	return status;
}

void guest_main(void *boot)
{
	u32 slot, feat, isr;
	u64 cap;

	(void)boot;
	for (slot = 0; slot < 32; slot++)
		if (pci_read(slot, 0) == 0x10011af4u)
			break;
	if (slot == 32) {
		puts("BLK: no device\n");
		return;
	}
	io = (u16)(pci_read(slot, 0x10) & ~3u);
	outb(io + 18, 0);		/* reset */
	outb(io + 18, 1);		/* ACKNOWLEDGE */
	outb(io + 18, 3);		/* DRIVER */
	feat = inl(io + 0);
	outl(io + 4, 0);
	puts("BLK: features "); put_hex(feat); puts(" ro "); put_dec(feat >> 5 & 1); putc('\n');
	cap = inl(io + 20) | (u64)inl(io + 24) << 32;
	puts("BLK: capacity "); put_dec(cap); putc('\n');
	outw(io + 14, 0);
	qsz = inw(io + 12);
	puts("BLK: queue size "); put_dec(qsz); putc('\n');
	if (!qsz || qsz > QSZ_MAX)
		return;
	memset(ring, 0, sizeof(ring));
	outl(io + 8, (u32)((u64)ring >> 12));
	outb(io + 18, 7);		/* DRIVER_OK */
	for (u64 s = 0; s < 32 && s < cap; s += 8) {
		u64 st = req(0, s, buf, 4096);

		puts("BLK: read "); put_dec(s); puts(" status "); put_dec(st);
		puts(" crc "); put_hex(crc32(0, buf, 4096)); putc('\n');
	}
	isr = inb(io + 19);
	puts("BLK: isr "); put_dec(isr); puts(" then "); put_dec(inb(io + 19)); putc('\n');
	/* a request past the end must fail */
	puts("BLK: past end status "); put_dec(req(0, cap, buf, 512)); putc('\n');
	memset(buf, 0xa5, 512);
	puts("BLK: write status "); put_dec(req(1, 1, buf, 512));
	puts(" crc "); put_hex(crc32(0, buf, 512)); putc('\n');
	memset(buf, 0, 512);
	puts("BLK: reread status "); put_dec(req(0, 1, buf, 512));
	puts(" crc "); put_hex(crc32(0, buf, 512)); putc('\n');
	puts("BLK: done\n");
}
