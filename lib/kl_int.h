/*
 * lib/kl_int.h - private to lib/: hooks between the I/O seam and allocation.
 */
#ifndef KEEL_KL_INT_H
#define KEEL_KL_INT_H

#include <stdbool.h>

/* True when the armed fault rule says this allocation must fail. */
bool kl_fault_malloc_hit(void);

#endif
