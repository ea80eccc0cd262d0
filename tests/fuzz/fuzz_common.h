/*
 * tests/fuzz/fuzz_common.h - shared body of the image-format fuzz targets.
 *
 * The input becomes a file in memory (memfd) opened through the normal
 * blk_open path with the format forced, checked (keel check, no repair),
 * then every extent is queried and read (bounded), so header parsing,
 * table walking and decompression all see hostile bytes. Errors are expected; crashes, hangs, leaks and UB are
 * what the fuzzer finds.
 */
#ifndef KEEL_FUZZ_COMMON_H
#define KEEL_FUZZ_COMMON_H

#define _GNU_SOURCE
#include "format/format.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FUZZ_READ_LIMIT (8u << 20)

static inline int fuzz_image_key(const uint8_t *data, size_t size, const char *fmt,
				 unsigned flags, const char *key)
{
	static uint8_t buf[65536];
	struct blk_open_opts o = { .format = fmt, .flags = flags,
				   .key = (const uint8_t *)key, .key_len = key ? strlen(key) : 0 };
	struct blk_dev *d = NULL;
	uint64_t off = 0, budget = FUZZ_READ_LIMIT;
	char path[64];
	int fd = memfd_create("fuzz", 0);

	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (blk_open(path, &o, &d) == 0) {
		struct blk_check_report rep;
		struct blk_info info;

		if (blk_info(d, &info) == 0)
			blk_info_release(&info);
		/* keel check walks the same tables its own way (report only) */
		blk_check(d, &rep, 0);
		blk_check_report_release(&rep);
		while (off < blk_size(d) && budget > 0) {
			struct blk_extent e;
			size_t n;

			if (blk_block_status_chain(d, off, blk_size(d) - off, &e) < 0)
				break;
			n = (size_t)KL_MIN(KL_MIN(e.len, (uint64_t)sizeof(buf)), budget);
			if (e.type == BLK_DATA && blk_pread(d, off, buf, n) < 0)
				break;
			budget -= n;
			/* jump over long extents, but look at their start */
			off += e.type == BLK_DATA ? n : e.len;
		}
		blk_close(d);
	}
	if (key) {
		/* and what keel info shows of it without the key */
		struct blk_info info;

		if (blk_info_nokey(path, fmt, &info) == 0)
			blk_info_release(&info);
	}
	close(fd);
	kl_err_clear();
	return 0;
}

static inline int fuzz_image(const uint8_t *data, size_t size, const char *fmt, unsigned flags)
{
	return fuzz_image_key(data, size, fmt, flags, NULL);
}

#endif
