/*
 * tests/vmm/guests/guest.h - the freestanding library of the VMM test guests:
 * port I/O, a polled 8250 console, PCI config mechanism #1, CRC-32, reset.
 * Each guest is one C file with guest_main(void *boot) and prints "KEY: value"
 * lines that tests/unit/vmm/test_kvm.c checks.
 */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

static inline void outb(u16 p, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(p)); }
static inline void outw(u16 p, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(p)); }
static inline void outl(u16 p, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(p)); }
static inline u8 inb(u16 p) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u16 inw(u16 p) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u32 inl(u16 p) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(p)); return v; }
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }
static inline u16 rd16(u64 a) { return *(volatile u16 *)a; }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline u64 rd64(u64 a) { return *(volatile u64 *)a; }

void putc(char c);
void puts(const char *s);
void put_hex(u64 v);
void put_dec(u64 v);
u32 crc32(u32 crc, const void *p, u64 n);
u32 pci_read(u32 slot, u32 reg);
void pci_write(u32 slot, u32 reg, u32 v);
void guest_reset(void) __attribute__((noreturn));
void *memset(void *d, int c, u64 n);
void *memcpy(void *d, const void *s, u64 n);
int memcmp(const void *a, const void *b, u64 n);
void guest_main(void *boot);

#endif
