/*
 * tests/fuzz/fuzz_qcow2.c - libFuzzer target for the qcow2 driver. First the
 * shared read walk (header, extensions, L1/L2/refcount/snapshot tables,
 * zlib and zstd clusters, extended L2 bitmaps), then a write pass over a
 * writable copy: allocation, copy-on-write and refcount updates driven by
 * hostile tables, internal snapshots diffed, created, reverted to and
 * deleted over them, a flush and a check. Seeds: tests/fuzz/corpus.d/qcow2.sh.
 */
#include "tests/fuzz/fuzz_common.h"

#include <string.h>

static int fuzz_extent(void *opaque, const struct blk_extent *e)
{
	(void)opaque;
	return e->len ? 0 : -EINVAL;
}

static void fuzz_writes(const uint8_t *data, size_t size)
{
	static uint8_t buf[70000];
	struct blk_open_opts o = { .format = "qcow2", .flags = BLK_OPEN_RDWR };
	struct blk_check_report r;
	struct blk_dev *d = NULL;
	char path[64];
	int fd = memfd_create("fuzzw", 0);
	uint64_t vs;

	if (fd < 0)
		return;
	if (write(fd, data, size) != (ssize_t)size)
		goto out;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	if (blk_open(path, &o, &d) < 0)
		goto out;
	vs = blk_size(d);
	memset(buf, 0x5a, sizeof(buf));
	if (vs >= sizeof(buf) + 1000) {
		blk_pwrite(d, 1000, buf, sizeof(buf));
		blk_pwrite(d, vs / 2, buf, 4096);
		blk_pwrite_zeroes(d, 0, KL_MIN(vs, (uint64_t)1 << 20), 0);
		blk_discard(d, vs - 5000, 5000);
		blk_pwrite(d, vs - sizeof(buf), buf, sizeof(buf));
	}
	blk_flush(d);
	/* snapshot updates walk (and count references of) every hostile table */
	{
		struct blk_snapshot_info *l = NULL;
		size_t n = 0;

		if (blk_snapshot_list(d, &l, &n) == 0 && n > 0) {
			char first[64];

			snprintf(first, sizeof(first), "%s", l[0].id);
			blk_snapshot_diff(d, first, NULL, fuzz_extent, NULL);
			blk_snapshot_revert(d, first);
			blk_snapshot_delete(d, first);
		}
		blk_snapshot_list_free(l, n);
		blk_snapshot_create(d, "fz");
		if (vs >= 4096)
			blk_pwrite(d, 0, buf, 4096);
		blk_snapshot_revert(d, "fz");
		blk_flush(d);
	}
	blk_check(d, &r, 0);
	blk_check_report_release(&r);
	blk_close(d);
out:
	close(fd);
	kl_err_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_image(data, size, "qcow2", 0);
	fuzz_writes(data, size);
	return 0;
}
