/*
 * tests/unit/lib/test_lib.c - lib/: CRC-32C, sizes, options, JSON, and the
 * fault-injecting I/O seam itself (the crash tests rely on it being right).
 */
#define _GNU_SOURCE
#include "tests/common/testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

START_TEST(kdf_vectors)
{
	/* RFC 7914 section 12, the second scrypt vector */
	static const uint8_t scrypt_want[64] = {
		0xfd, 0xba, 0xbe, 0x1c, 0x9d, 0x34, 0x72, 0x00, 0x78, 0x56, 0xe7, 0x19, 0x0d,
		0x01, 0xe9, 0xfe, 0x7c, 0x6a, 0xd7, 0xcb, 0xc8, 0x23, 0x78, 0x30, 0xe7, 0x73,
		0x76, 0x63, 0x4b, 0x37, 0x31, 0x62, 0x2e, 0xaf, 0x30, 0xd9, 0x2e, 0x22, 0xa3,
		0x88, 0x6f, 0xf1, 0x09, 0x27, 0x9d, 0x98, 0x30, 0xda, 0xc7, 0x27, 0xaf, 0xb9,
		0x4a, 0x83, 0xee, 0x6d, 0x83, 0x60, 0xcb, 0xdf, 0xa2, 0xcc, 0x06, 0x40,
	};
	/* RFC 5869 appendix A.1 */
	static const uint8_t hkdf_want[42] = {
		0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36,
		0x2f, 0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56,
		0xec, 0xc4, 0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65,
	};
	static const uint8_t salt[13] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
	uint8_t ikm[22], out[64];

	ck_assert_ok(kl_scrypt("password", 8, (const uint8_t *)"NaCl", 4, 1024, 8, 16, out, 64));
	ck_assert_mem_eq(out, scrypt_want, 64);
	memset(ikm, 0x0b, sizeof(ikm));
	ck_assert_ok(kl_hkdf_sha256(ikm, sizeof(ikm), salt, sizeof(salt),
				    "\xf0\xf1\xf2\xf3\xf4\xf5\xf6\xf7\xf8\xf9", out, 42));
	ck_assert_mem_eq(out, hkdf_want, 42);
	/* past the ceiling (2^21 * 8 * 128 = 2 GiB) it fails, without taking the memory */
	ck_assert_int_eq(kl_scrypt("password", 8, (const uint8_t *)"NaCl", 4, 1u << 21, 8, 1, out,
				   32), -EIO);
}
END_TEST

START_TEST(crc32c_vectors)
{
	/* RFC 3720 B.4 test vectors */
	uint8_t zeros[32] = { 0 }, ones[32], inc[32];

	memset(ones, 0xff, sizeof(ones));
	for (int i = 0; i < 32; i++)
		inc[i] = (uint8_t)i;
	ck_assert_uint_eq(kl_crc32c(0, zeros, 32), 0x8A9136AA);
	ck_assert_uint_eq(kl_crc32c(0, ones, 32), 0x62A8AB43);
	ck_assert_uint_eq(kl_crc32c(0, inc, 32), 0x46DD794E);
	ck_assert_uint_eq(kl_crc32c(0, "123456789", 9), 0xE3069283);
	/* incremental equals one shot */
	ck_assert_uint_eq(kl_crc32c(kl_crc32c(0, "1234", 4), "56789", 5), 0xE3069283);
}
END_TEST

START_TEST(parse_sizes)
{
	uint64_t v;

	ck_assert_ok(kl_parse_size("4096", &v));
	ck_assert_uint_eq(v, 4096);
	ck_assert_ok(kl_parse_size("64K", &v));
	ck_assert_uint_eq(v, 65536);
	ck_assert_ok(kl_parse_size("16T", &v));
	ck_assert_uint_eq(v, 16ULL << 40);
	ck_assert_ok(kl_parse_size("1.5G", &v));
	ck_assert_uint_eq(v, 3ULL << 29);
	ck_assert_ok(kl_parse_size("2MiB", &v));
	ck_assert_uint_eq(v, 2ULL << 20);
	ck_assert_int_lt(kl_parse_size("-1", &v), 0);
	ck_assert_int_lt(kl_parse_size("12Q", &v), 0);
	ck_assert_int_lt(kl_parse_size("99999999999999999999", &v), 0);
	ck_assert_int_lt(kl_parse_size("16777216T", &v), 0);
}
END_TEST

START_TEST(format_sizes)
{
	static const struct {
		uint64_t n;
		const char *s;
	} v[] = {
		{ 0, "0 B" },	       { 1023, "1023 B" },	{ 1536, "1.5 KiB" },
		{ 3211264, "3.06 MiB" }, { 1069547520, "1020 MiB" }, /* was 1.02e+03 */
		{ 1072955392, "1023 MiB" }, { 1ULL << 30, "1 GiB" },
	};
	char buf[32];

	for (size_t i = 0; i < KL_ARRAY_SIZE(v); i++) {
		kl_format_size(v[i].n, buf, sizeof(buf));
		ck_assert_str_eq(buf, v[i].s);
	}
}
END_TEST

START_TEST(options)
{
	struct kl_opts *o = NULL;
	uint64_t cs = 0;
	bool b = false, found;

	ck_assert_ok(kl_opts_parse("cluster_size=64K,name=a,,b,azure", &o));
	ck_assert_ok(kl_opts_get_size(o, "cluster_size", &cs, &found));
	ck_assert(found);
	ck_assert_uint_eq(cs, 65536);
	ck_assert_str_eq(kl_opts_get(o, "name"), "a,b");
	ck_assert_int_lt(kl_opts_check_unused(o, "x"), 0); /* azure not consumed */
	ck_assert_ok(kl_opts_get_bool(o, "azure", &b, &found));
	ck_assert(b);
	ck_assert_ok(kl_opts_check_unused(o, "x"));
	kl_opts_free(o);
}
END_TEST

static void write_file(const char *path, uint8_t fill, size_t len)
{
	struct kl_file *f;
	uint8_t *buf = kl_malloc(len);

	memset(buf, fill, len);
	ck_assert_ok(kl_io_open(path, KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC, &f));
	ck_assert_ok(kl_io_pwrite(f, 0, buf, len));
	ck_assert_ok(kl_io_sync(f));
	kl_io_close(f);
	kl_free(buf);
}

START_TEST(fault_error_at_point)
{
	struct kl_fault_rule r = { .mode = KL_FAULT_ERROR, .at = 2, .err = ENOSPC };
	struct kl_file *f;
	uint8_t b[512] = { 1 };

	write_file(tu_path("e.bin"), 0, 4096);
	ck_assert_ok(kl_io_open(tu_path("e.bin"), KL_O_RDWR, &f));
	kl_fault_arm(&r);
	ck_assert_ok(kl_io_pwrite(f, 0, b, sizeof(b)));
	ck_assert_int_eq(kl_io_pwrite(f, 512, b, sizeof(b)), -ENOSPC);
	ck_assert_ok(kl_io_pwrite(f, 1024, b, sizeof(b))); /* once, not persistent */
	ck_assert(kl_fault_fired());
	ck_assert_uint_eq(kl_fault_points(), 3);
	kl_fault_reset();
	kl_io_close(f);
}
END_TEST

START_TEST(fault_crash_drops_only_unsynced)
{
	/* synced data always survives; unsynced writes survive or vanish whole */
	for (uint64_t seed = 1; seed <= 40; seed++) {
		struct kl_fault_rule r = { .mode = KL_FAULT_CRASH, .at = 4, .seed = seed };
		struct kl_file *f;
		uint8_t a[1024], b[1024], got[4096];

		memset(a, 0xaa, sizeof(a));
		memset(b, 0xbb, sizeof(b));
		write_file(tu_path("c.bin"), 0, 4096);
		ck_assert_ok(kl_io_open(tu_path("c.bin"), KL_O_RDWR, &f));
		kl_fault_arm(&r);
		ck_assert_ok(kl_io_pwrite(f, 0, a, sizeof(a)));	   /* 1 */
		ck_assert_ok(kl_io_sync(f));			   /* 2 */
		ck_assert_ok(kl_io_pwrite(f, 1024, b, sizeof(b))); /* 3 */
		ck_assert_int_eq(kl_io_pwrite(f, 2048, b, sizeof(b)), -EIO); /* 4: crash */
		ck_assert_int_lt(kl_io_sync(f), 0);
		kl_io_close(f);
		kl_fault_settle();
		ck_assert_ok(kl_io_open(tu_path("c.bin"), KL_O_RDONLY, &f));
		ck_assert_int_eq(kl_io_pread(f, 0, got, sizeof(got)), 4096);
		kl_io_close(f);
		ck_assert(memcmp(got, a, 1024) == 0);
		ck_assert(kl_is_zero(got + 1024, 1024) || memcmp(got + 1024, b, 1024) == 0);
		ck_assert(kl_is_zero(got + 2048, 2048)); /* the crashing write never happened */
	}
}
END_TEST

START_TEST(nosync_writes_are_never_durable)
{
	/*
	 * KL_O_NOSYNC (convert -t unsafe): a sync does not make earlier writes
	 * durable, so across seeds a simulated power cut loses even "synced"
	 * data at least once; and the file still reads back whole without one.
	 */
	bool lost = false;

	for (uint64_t seed = 1; seed <= 40; seed++) {
		struct kl_fault_rule r = { .mode = KL_FAULT_CRASH, .at = 3, .seed = seed };
		struct kl_file *f;
		uint8_t a[1024], got[1024];

		memset(a, 0xaa, sizeof(a));
		write_file(tu_path("n.bin"), 0, 1024);
		ck_assert_ok(kl_io_open(tu_path("n.bin"), KL_O_RDWR | KL_O_NOSYNC, &f));
		kl_fault_arm(&r);
		ck_assert_ok(kl_io_pwrite(f, 0, a, sizeof(a))); /* 1 */
		ck_assert_ok(kl_io_sync(f));			/* 2: not a barrier */
		ck_assert_int_eq(kl_io_pwrite(f, 0, a, 1), -EIO); /* 3: crash */
		kl_io_close(f);
		kl_fault_settle();
		kl_fault_reset();
		ck_assert_ok(kl_io_open(tu_path("n.bin"), KL_O_RDONLY, &f));
		ck_assert_int_eq(kl_io_pread(f, 0, got, sizeof(got)), 1024);
		kl_io_close(f);
		ck_assert(kl_is_zero(got, sizeof(got)) || memcmp(got, a, sizeof(a)) == 0);
		lost |= kl_is_zero(got, sizeof(got));
	}
	ck_assert(lost);
}
END_TEST

START_TEST(rename_never_replaces_a_special_file)
{
	/* a commit over a device node or a FIFO would swap it for a regular file */
	struct stat st;

	write_file(tu_path("new.bin"), 0x11, 512);
	ck_assert_int_eq(mkfifo(tu_path("fifo"), 0600), 0);
	ck_assert_int_eq(kl_io_rename(tu_path("new.bin"), tu_path("fifo")), -EEXIST);
	ck_assert(strstr(kl_errmsg(), "not a regular file") != NULL);
	ck_assert_int_eq(lstat(tu_path("fifo"), &st), 0);
	ck_assert(S_ISFIFO(st.st_mode));
	ck_assert_int_eq(access(tu_path("new.bin"), F_OK), 0);
	/* over a regular file (or a link), as before */
	write_file(tu_path("old.bin"), 0x22, 512);
	ck_assert_ok(kl_io_rename(tu_path("new.bin"), tu_path("old.bin")));
}
END_TEST

START_TEST(writer_lock_is_seen_by_readers)
{
	/* copy commands refuse a source with a writer: keel's own lock counts */
	struct kl_file *w, *r;

	write_file(tu_path("lk.bin"), 0x33, 4096);
	ck_assert_ok(kl_io_open(tu_path("lk.bin"), KL_O_RDONLY, &r));
	ck_assert(!kl_io_writer_active(r));
	ck_assert_ok(kl_io_open(tu_path("lk.bin"), KL_O_RDWR, &w));
	ck_assert(!kl_io_writer_active(r)); /* open for writing, but not locked */
	ck_assert_ok(kl_io_lock(w, false));
	ck_assert(kl_io_writer_active(r));
	kl_io_close(w);
	ck_assert(!kl_io_writer_active(r)); /* the lock dies with its holder */
	kl_io_close(r);
}
END_TEST

START_TEST(fault_torn_write_is_sector_granular)
{
	bool saw_partial = false;

	for (uint64_t seed = 1; seed <= 60; seed++) {
		struct kl_fault_rule r = { .mode = KL_FAULT_CRASH_TORN, .at = 2, .seed = seed };
		struct kl_file *f;
		uint8_t b[4096], got[4096];
		int kept = 0;

		memset(b, 0xcc, sizeof(b));
		write_file(tu_path("t.bin"), 0, 4096);
		ck_assert_ok(kl_io_open(tu_path("t.bin"), KL_O_RDWR, &f));
		kl_fault_arm(&r);
		ck_assert_ok(kl_io_pwrite(f, 0, b, sizeof(b)));
		ck_assert_int_lt(kl_io_sync(f), 0);
		kl_io_close(f);
		kl_fault_settle();
		ck_assert_ok(kl_io_open(tu_path("t.bin"), KL_O_RDONLY, &f));
		ck_assert_int_eq(kl_io_pread(f, 0, got, sizeof(got)), 4096);
		kl_io_close(f);
		for (int s = 0; s < 8; s++) {
			bool all_new = memcmp(got + s * 512, b, 512) == 0;

			ck_assert(all_new || kl_is_zero(got + s * 512, 512));
			kept += all_new;
		}
		if (kept > 0 && kept < 8)
			saw_partial = true;
	}
	ck_assert(saw_partial);
}
END_TEST

START_TEST(fault_malloc)
{
	struct kl_fault_rule r = { .malloc_at = 2 };
	void *a, *b, *c;

	kl_fault_arm(&r);
	a = kl_malloc(10);
	b = kl_malloc(10);
	c = kl_malloc(10);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_null(b);
	ck_assert_ptr_nonnull(c);
	kl_fault_reset();
	kl_free(a);
	kl_free(c);
}
END_TEST

START_TEST(short_read_zero_fills)
{
	struct kl_file *f;
	uint8_t got[8192];

	write_file(tu_path("s.bin"), 0x77, 1000);
	ck_assert_ok(kl_io_open(tu_path("s.bin"), KL_O_RDONLY, &f));
	memset(got, 0xee, sizeof(got));
	ck_assert_int_eq(kl_io_pread(f, 0, got, sizeof(got)), 1000);
	ck_assert(kl_is_zero(got + 1000, sizeof(got) - 1000));
	ck_assert_int_eq(kl_io_pread_full(f, 0, got, 2000, "header"), -EUCLEAN);
	ck_assert(strstr(kl_errmsg(), "header") != NULL);
	kl_io_close(f);
}
END_TEST

/*
 * KL_O_DIRECT: big aligned writes go through the O_DIRECT descriptor,
 * everything else buffered, and reads see one file whatever the mix
 * (buffered over direct, direct over buffered, an unaligned tail).
 */
START_TEST(direct_writes_mix_with_buffered)
{
	const size_t size = 4u << 20;
	uint8_t *model = kl_calloc(1, size), *big = kl_aligned_alloc(1u << 20), *got = kl_malloc(size);
	struct kl_file *f;
	bool can;
	int fd;

	ck_assert(model && big && got);
	/* does this directory's filesystem take O_DIRECT at all? (tmpfs may not) */
	fd = open(tu_path("probe.bin"), O_RDWR | O_CREAT | O_DIRECT, 0644);
	can = fd >= 0;
	if (fd >= 0)
		close(fd);
	ck_assert_ok(kl_io_open(tu_path("d.bin"), KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC | KL_O_DIRECT,
				&f));
	if (!can)
		printf("SKIP-PART: %s refuses O_DIRECT; only the buffered fallback is tested\n",
		       tu_path(""));
	ck_assert_int_eq(kl_io_direct(f), can);

	memset(big, 0xd1, 1u << 20); /* direct */
	ck_assert_ok(kl_io_pwrite(f, 0, big, 1u << 20));
	memset(model, 0xd1, 1u << 20);
	memset(big, 0xb2, 700); /* small, unaligned: buffered, inside the direct range */
	ck_assert_ok(kl_io_pwrite(f, 4096 + 17, big, 700));
	memset(model + 4096 + 17, 0xb2, 700);
	memset(big, 0xb3, 8192); /* buffered, then covered by a direct write */
	ck_assert_ok(kl_io_pwrite(f, 2u << 20, big, 8192));
	memset(big, 0xd4, 1u << 20);
	ck_assert_ok(kl_io_pwrite(f, (2u << 20) - 4096, big, 1u << 20));
	memset(model + (2u << 20) - 4096, 0xd4, 1u << 20);
	memset(big, 0xd5, 1u << 20); /* aligned start, 100-byte tail: split */
	ck_assert_ok(kl_io_pwrite(f, 3u << 20, big, (512u << 10) + 100));
	memset(model + (3u << 20), 0xd5, (512u << 10) + 100);
	memset(big, 0xd6, 1u << 20); /* misaligned buffer: buffered */
	ck_assert_ok(kl_io_pwrite(f, 1u << 20, big + 1, 256u << 10));
	memset(model + (1u << 20), 0xd6, 256u << 10);
	ck_assert_ok(kl_io_sync(f));

	ck_assert_int_eq(kl_io_pread(f, 0, got, size), (3u << 20) + (512u << 10) + 100);
	ck_assert(memcmp(got, model, size) == 0);
	kl_io_close(f);
	/* and a fresh open (no cache of ours) agrees */
	ck_assert_ok(kl_io_open(tu_path("d.bin"), KL_O_RDONLY, &f));
	memset(got, 0xee, size);
	kl_io_pread(f, 0, got, size);
	ck_assert(memcmp(got, model, size) == 0);
	kl_io_close(f);
	kl_free(model);
	kl_free(big);
	kl_free(got);
}
END_TEST

/*
 * kl_io_combine: against a model file, a random mix of back-to-back
 * appends (gathered), writes elsewhere and overlapping ones (which must
 * land after what was gathered before them), reads of gathered bytes,
 * size and truncation. The appends must really be gathered (far fewer
 * I/O points than writes), and a write error of the gathered bytes must
 * surface at the next sync without losing them.
 */
START_TEST(combined_writes_keep_order_and_content)
{
	const size_t size = 8u << 20;
	uint8_t *model = kl_calloc(1, size), *got = kl_malloc(size), *piece = kl_malloc(64u << 10);
	uint64_t end = 0, fsize = 0, rng = 12345, appends = 0, others = 0, sz;
	struct kl_fault_rule count = { .mode = KL_FAULT_ERROR, .at = UINT64_MAX, .err = EIO };
	struct kl_fault_rule fail = { .mode = KL_FAULT_ERROR, .at = 1, .err = ENOSPC };
	struct kl_file *f, *g;

	ck_assert(model && got && piece);
	ck_assert_ok(kl_io_open(tu_path("w.bin"), KL_O_RDWR | KL_O_CREAT | KL_O_TRUNC | KL_O_DIRECT,
				&f));
	ck_assert_ok(kl_io_combine(f, 1u << 20));
	kl_fault_arm(&count); /* counts I/O points, never fires */
	for (int i = 0; i < 3000; i++) {
		uint64_t r, off;
		size_t len;

		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		r = rng >> 33;
		len = 1 + (size_t)(r % (40u << 10));
		if (r % 100 < 80 && end + len <= size) { /* the next append */
			off = end;
			appends++;
		} else if (r % 100 < 85 && fsize + 70000 + len <= size) {
			/* a little past the end of the file: gathered, the gap as zeros */
			off = fsize + (r >> 9) % 70000;
			end = off;
			appends++;
		} else if (r % 100 < 95) { /* anywhere, maybe over gathered bytes */
			off = (r >> 7) % (size - len);
			others++;
		} else if (r % 100 < 98) { /* read back a range ending in the gathered bytes */
			off = end > len ? end - len : 0;
			len = (size_t)KL_MIN((uint64_t)len, fsize - off);
			memset(got, 0xee, len);
			ck_assert_int_eq(kl_io_pread(f, off, got, len), (ssize_t)len);
			ck_assert(memcmp(got, model + off, len) == 0);
			others++;
			continue;
		} else {
			ck_assert_ok(kl_io_size(f, &sz));
			ck_assert_uint_eq(sz, fsize);
			if (r % 2) { /* cut the file and carry on appending at its new end */
				fsize = end = fsize / 2;
				ck_assert_ok(kl_io_truncate(f, fsize));
				memset(model + fsize, 0, size - fsize);
			}
			others++;
			continue;
		}
		for (size_t b = 0; b < len; b++)
			piece[b] = (uint8_t)(rng >> (b % 56)) ^ (uint8_t)b;
		ck_assert_ok(kl_io_pwrite(f, off, piece, len));
		memcpy(model + off, piece, len);
		if (off == end)
			end = off + len;
		fsize = KL_MAX(fsize, off + len);
	}
	/*
	 * gathered: each other operation writes out what is gathered (a
	 * point, and one of its own when a write or truncate), the appends
	 * between them a point per MiB or so, not one each
	 */
	ck_assert_uint_lt(kl_fault_points(), 2 * others + appends / 10);
	kl_fault_reset();

	/* another handle sees it all after the sync */
	ck_assert_ok(kl_io_sync(f));
	ck_assert_ok(kl_io_open(tu_path("w.bin"), KL_O_RDONLY, &g));
	ck_assert_ok(kl_io_size(g, &sz));
	ck_assert_uint_eq(sz, fsize);
	ck_assert_int_eq(kl_io_pread(g, 0, got, (size_t)fsize), (ssize_t)fsize);
	ck_assert(memcmp(got, model, (size_t)fsize) == 0);
	kl_io_close(g);

	/*
	 * A failing write of gathered bytes, here one written behind while
	 * more is gathered: reported at the next write, and at every write,
	 * sync and read of gathered bytes after it (the file no longer holds
	 * what its writer believes).
	 */
	for (int i = 0, rc = 0; rc == 0; i++) {
		tu_fill(piece, 40000, (uint64_t)i, 0);
		rc = kl_io_pwrite(f, end, piece, 40000);
		end += rc == 0 ? 40000 : 0;
		if (i == 20)
			kl_fault_arm(&fail); /* the next write out fails */
		if (i == 64) /* a MiB and more gathered since: it did fail */
			ck_assert_int_eq(rc, -ENOSPC);
	}
	kl_fault_reset();
	ck_assert_int_eq(kl_io_sync(f), -ENOSPC);
	ck_assert_int_eq(kl_io_pread(f, end - 100, got, 100), -ENOSPC);
	ck_assert_int_eq(kl_io_combine(f, 0), -ENOSPC);
	kl_io_close(f);
	kl_free(model);
	kl_free(got);
	kl_free(piece);
}
END_TEST

static Suite *lib_suite(void)
{
	Suite *s = suite_create("lib");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, crc32c_vectors);
	tcase_add_test(tc, kdf_vectors);
	tcase_add_test(tc, parse_sizes);
	tcase_add_test(tc, format_sizes);
	tcase_add_test(tc, options);
	tcase_add_test(tc, fault_error_at_point);
	tcase_add_test(tc, fault_crash_drops_only_unsynced);
	tcase_add_test(tc, nosync_writes_are_never_durable);
	tcase_add_test(tc, rename_never_replaces_a_special_file);
	tcase_add_test(tc, writer_lock_is_seen_by_readers);
	tcase_add_test(tc, fault_torn_write_is_sector_granular);
	tcase_add_test(tc, fault_malloc);
	tcase_add_test(tc, short_read_zero_fills);
	tcase_add_test(tc, direct_writes_mix_with_buffered);
	tcase_add_test(tc, combined_writes_keep_order_and_content);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	return tu_run_suite(lib_suite());
}
