/* tests/vmm/guests/spin.c - never exits: the watchdog must stop it */
#include "guest.h"

void guest_main(void *boot)
{
	(void)boot;
	puts("SPIN: spinning\n");
	for (;;)
		__asm__ volatile("pause");
}
