/* tests/vmm/guests/triple.c - reset by triple fault (what reboot=t does) */
#include "guest.h"

void guest_main(void *boot)
{
	static const struct { u16 limit; u64 base; } __attribute__((packed)) empty = { 0, 0 };

	(void)boot;
	puts("TRIPLE: faulting\n");
	__asm__ volatile("lidt %0; int3" : : "m"(empty));
	puts("TRIPLE: survived\n");
}
