/*
 * format/vhdx-log.c - replaying the VHDX metadata log (MS-VHDX 2.3).
 *
 * The log is a ring of 4 KiB sectors at LogOffset. An entry is one or more
 * descriptor sectors (a 64-byte header, then 32-byte "desc"/"zero"
 * descriptors) followed by one "data" sector per data descriptor; a 4 KiB
 * update = LeadingBytes(8) from the descriptor + 4084 bytes of the data
 * sector + TrailingBytes(4). Entries carry the header's LogGuid, a sequence
 * number repeated in every descriptor and data sector, and a CRC-32C over
 * the whole entry.
 *
 * The active sequence is found with the scan of MS-VHDX 2.3.3: from each
 * candidate tail, extend a run of valid entries with consecutive sequence
 * numbers; the run is valid when its head entry's Tail points into it; the
 * valid run with the highest sequence number wins; then replay from the
 * entry the head's Tail names through the head.
 *
 * The result is kept as an overlay (s->ov): a read-only open serves every
 * read of the file through it and never writes; a writable open writes it
 * out (vhdx_log_commit) and clears LogGuid.
 */
#include "format/vhdx.h"

#include <string.h>

#define SIG_LOGE 0x65676F6Cu /* "loge" */
#define SIG_DESC 0x63736564u /* "desc" */
#define SIG_ZERO 0x6F72657Au /* "zero" */
#define SIG_DATA 0x61746164u /* "data" */
#define LOG_MAX_LAST_OFF (1ULL << 47) /* LastFileOffset cap: 128 TiB */
#define LOG_SCAN_BUDGET (1u << 22)    /* entry steps in the active-sequence scan */
#define LOG_MIN_TARGET (192 * 1024ULL) /* below: identifier and headers, never logged */

struct entry_info {
	uint8_t checked; /* 0 unknown, 1 valid, 2 invalid */
	uint32_t len;
	uint32_t tail;
	uint64_t seq;
	uint64_t flushed;
	uint64_t last;
};

struct log_scan {
	struct blk_dev *d;
	uint8_t *sec;	      /* one 4 KiB sector */
	uint8_t *data;	      /* one data sector, for emitting */
	struct entry_info *info;
	uint64_t nsec;	      /* sectors in the log */
	bool emit;	      /* append overlay items while walking */
};

static int read_log_sector(struct log_scan *ls, uint64_t pos, uint8_t *buf)
{
	struct vhdx_state *s = ls->d->priv;

	return kl_io_pread_full(ls->d->file, s->log_off + pos, buf, VHDX_LOG_SECTOR,
				"VHDX log sector");
}

static int add_item(struct vhdx_state *s, const struct vhdx_log_item *it)
{
	if (s->nov == s->ov_cap) {
		size_t cap = s->ov_cap ? s->ov_cap * 2 : 16;
		struct vhdx_log_item *nv = kl_realloc(s->ov, cap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		s->ov = nv;
		s->ov_cap = cap;
	}
	if (s->nov == 0 || it->file_off < s->ov_lo)
		s->ov_lo = it->file_off;
	if (s->nov == 0 || it->file_off + it->len > s->ov_hi)
		s->ov_hi = it->file_off + it->len;
	s->ov[s->nov++] = *it;
	return 0;
}

/*
 * Check a descriptor's target: 4 KiB aligned, not in the identifier or
 * headers, not in the log itself, below the larger of the file size and
 * the entry's LastFileOffset.
 */
static bool target_ok(const struct vhdx_state *s, uint64_t off, uint64_t len, uint64_t limit)
{
	if (off % VHDX_LOG_SECTOR || len % VHDX_LOG_SECTOR || off < LOG_MIN_TARGET)
		return false;
	if (!kl_range_ok(off, len, limit))
		return false;
	return off + len <= s->log_off || off >= s->log_off + s->log_len;
}

/*
 * Validate the entry at ring position pos (every field, the CRC, the
 * descriptors and the data sectors); with ls->emit also append its updates
 * to the overlay. Returns 1 valid, 0 invalid, or a negative I/O error.
 */
static int walk_entry(struct log_scan *ls, uint64_t pos, struct entry_info *out)
{
	struct vhdx_state *s = ls->d->priv;
	uint8_t *b = ls->sec;
	uint32_t len, tail, ndesc, want_crc, crc;
	uint64_t seq, flushed, last, dsec, nsec, limit, ndata = 0, k = 0;
	int rc;

	KL_TRY(read_log_sector(ls, pos, b));
	if (get_le32(b) != SIG_LOGE)
		return 0;
	len = get_le32(b + 8);
	tail = get_le32(b + 12);
	seq = get_le64(b + 16);
	ndesc = get_le32(b + 24);
	flushed = get_le64(b + 48);
	last = get_le64(b + 56);
	want_crc = get_le32(b + 4);
	if (len == 0 || len % VHDX_LOG_SECTOR || len > s->log_len || tail % VHDX_LOG_SECTOR ||
	    tail >= s->log_len || seq == 0 || memcmp(b + 32, s->log_guid, 16) != 0 ||
	    last > LOG_MAX_LAST_OFF || flushed > last)
		return 0;
	nsec = len / VHDX_LOG_SECTOR;
	dsec = KL_DIV_ROUND_UP(64 + 32 * (uint64_t)ndesc, VHDX_LOG_SECTOR);
	if (dsec > nsec)
		return 0;
	limit = KL_MAX(s->file_size, last);
	put_le32(b + 4, 0);
	crc = kl_crc32c(0, b, VHDX_LOG_SECTOR);
	/* descriptor sectors: the first holds the header and 126 descriptors */
	for (uint64_t i = 0; i < dsec; i++) {
		if (i > 0) {
			KL_TRY(read_log_sector(ls, (pos + i * VHDX_LOG_SECTOR) % s->log_len, b));
			crc = kl_crc32c(crc, b, VHDX_LOG_SECTOR);
		}
		for (unsigned slot = i == 0 ? 2 : 0; slot < 128 && k < ndesc; slot++, k++) {
			const uint8_t *e = b + 32 * slot;
			uint32_t sig = get_le32(e);

			if (get_le64(e + 24) != seq)
				return 0;
			if (sig == SIG_DESC) {
				if (!target_ok(s, get_le64(e + 16), VHDX_LOG_SECTOR, limit))
					return 0;
				ndata++;
			} else if (sig == SIG_ZERO) {
				if (!target_ok(s, get_le64(e + 16), get_le64(e + 8), limit))
					return 0;
			} else {
				return 0;
			}
		}
	}
	if (dsec + ndata > nsec)
		return 0;
	/* data and padding sectors complete the CRC; data sectors repeat seq */
	for (uint64_t i = dsec; i < nsec; i++) {
		KL_TRY(read_log_sector(ls, (pos + i * VHDX_LOG_SECTOR) % s->log_len, b));
		if (i < dsec + ndata &&
		    (get_le32(b) != SIG_DATA || get_le32(b + 4) != (uint32_t)(seq >> 32) ||
		     get_le32(b + 4092) != (uint32_t)seq))
			return 0;
		crc = kl_crc32c(crc, b, VHDX_LOG_SECTOR);
	}
	if (crc != want_crc)
		return 0;
	out->len = len;
	out->tail = tail;
	out->seq = seq;
	out->flushed = flushed;
	out->last = last;
	if (!ls->emit)
		return 1;

	/* second pass: the descriptors again, pairing data descriptors with sectors */
	k = 0;
	ndata = 0;
	for (uint64_t i = 0; i < dsec; i++) {
		KL_TRY(read_log_sector(ls, (pos + i * VHDX_LOG_SECTOR) % s->log_len, b));
		for (unsigned slot = i == 0 ? 2 : 0; slot < 128 && k < ndesc; slot++, k++) {
			const uint8_t *e = b + 32 * slot;
			struct vhdx_log_item it = { .file_off = get_le64(e + 16) };

			if (get_le32(e) == SIG_DESC) {
				it.len = VHDX_LOG_SECTOR;
				it.log_pos = (pos + (dsec + ndata) * VHDX_LOG_SECTOR) % s->log_len;
				memcpy(it.lead, e + 8, 8);
				memcpy(it.trail, e + 4, 4);
				ndata++;
			} else {
				it.len = get_le64(e + 8);
				it.log_pos = UINT64_MAX;
				if (it.len == 0)
					continue;
			}
			rc = add_item(s, &it);
			if (rc < 0)
				return rc;
		}
	}
	return 1;
}

static int entry_at(struct log_scan *ls, uint64_t pos, const struct entry_info **out)
{
	struct entry_info *ei = &ls->info[pos / VHDX_LOG_SECTOR];

	if (!ei->checked) {
		int rc = walk_entry(ls, pos, ei);

		if (rc < 0)
			return rc;
		ei->checked = rc ? 1 : 2;
	}
	*out = ei->checked == 1 ? ei : NULL;
	return 0;
}

int vhdx_log_load(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	struct log_scan ls = { .d = d };
	uint64_t *run = NULL, cur_tail = 0, old_tail = 0, budget = LOG_SCAN_BUDGET;
	uint64_t cand_seq = 0, cand_count = 0;
	uint64_t *cand = NULL;
	const struct entry_info *head = NULL;
	char g[39];
	int rc = 0;

	ls.nsec = s->log_len / VHDX_LOG_SECTOR;
	ls.sec = kl_malloc(VHDX_LOG_SECTOR);
	ls.info = kl_calloc((size_t)ls.nsec, sizeof(*ls.info));
	run = kl_malloc((size_t)ls.nsec * sizeof(*run));
	cand = kl_malloc((size_t)ls.nsec * sizeof(*cand));
	if (!ls.sec || !ls.info || !run || !cand) {
		rc = -ENOMEM;
		goto out;
	}
	for (;;) {
		uint64_t pos = cur_tail, total = 0, count = 0, last_seq = 0, tail_at = UINT64_MAX;
		const struct entry_info *ei = NULL, *hd = NULL;

		/* extend the current sequence from cur_tail */
		while (total < s->log_len) {
			if (budget-- == 0) {
				rc = kl_err(-EUCLEAN, "%s: the VHDX log at %llu is too tangled to "
						      "scan (more than %u entry steps)",
					    d->filename, (unsigned long long)s->log_off,
					    LOG_SCAN_BUDGET);
				goto out;
			}
			rc = entry_at(&ls, pos, &ei);
			if (rc < 0)
				goto out;
			if (!ei || (count && ei->seq != last_seq + 1) ||
			    total + ei->len > s->log_len)
				break;
			run[count++] = pos;
			last_seq = ei->seq;
			hd = ei;
			total += ei->len;
			pos = (pos + ei->len) % s->log_len;
		}
		if (count) {
			for (uint64_t i = 0; i < count; i++)
				if (run[i] == hd->tail)
					tail_at = i;
		}
		if (tail_at != UINT64_MAX && last_seq > cand_seq) {
			cand_seq = last_seq;
			cand_count = count - tail_at;
			memcpy(cand, run + tail_at, (size_t)cand_count * sizeof(*cand));
			head = hd;
		}
		if (tail_at == UINT64_MAX)
			cur_tail += VHDX_LOG_SECTOR;
		else
			cur_tail += total;
		if (cur_tail >= s->log_len)
			cur_tail -= s->log_len;
		if (cur_tail <= old_tail)
			break;
		old_tail = cur_tail;
	}
	vhdx_guid_format(s->log_guid, g, true);
	if (!head) {
		rc = kl_err(-EUCLEAN,
			    "%s: LogGuid %s is set but the log at %llu (%u bytes) holds no valid "
			    "entry sequence for it; the file is corrupt",
			    d->filename, g, (unsigned long long)s->log_off, s->log_len);
		goto out;
	}
	if (s->file_size < head->flushed) {
		rc = kl_err(-EUCLEAN,
			    "%s: file is %llu bytes but its log says it was at least %llu; the "
			    "file has been truncated",
			    d->filename, (unsigned long long)s->file_size,
			    (unsigned long long)head->flushed);
		goto out;
	}
	s->log_last_file_off = head->last;
	s->log_flushed_file_off = head->flushed;
	/* replay from the tail entry to the head, in order */
	ls.emit = true;
	for (uint64_t i = 0; i < cand_count; i++) {
		struct entry_info tmp;

		rc = walk_entry(&ls, cand[i], &tmp);
		if (rc == 0)
			rc = kl_err(-EIO, "%s: VHDX log entry at %llu changed while replaying",
				    d->filename, (unsigned long long)(s->log_off + cand[i]));
		if (rc < 0)
			goto out;
		rc = 0;
	}
	s->log_entries = cand_count;
	s->log_state = VHDX_LOG_IN_MEMORY;
out:
	if (rc < 0)
		vhdx_log_free(s);
	kl_free(ls.sec);
	kl_free(ls.info);
	kl_free(run);
	kl_free(cand);
	return rc;
}

/* The 4 KiB an overlay data item stands for. */
static int item_sector(struct blk_dev *d, const struct vhdx_log_item *it, uint8_t *sec)
{
	struct vhdx_state *s = d->priv;

	KL_TRY(kl_io_pread_full(d->file, s->log_off + it->log_pos, sec, VHDX_LOG_SECTOR,
				"VHDX log data sector"));
	memcpy(sec, it->lead, 8);
	memcpy(sec + 4092, it->trail, 4);
	return 0;
}

int vhdx_log_overlay(struct blk_dev *d, uint64_t off, uint8_t *buf, size_t len)
{
	struct vhdx_state *s = d->priv;
	uint8_t sec[VHDX_LOG_SECTOR];
	uint64_t end = off + len;

	if (end <= s->ov_lo || off >= s->ov_hi)
		return 0;
	/* later items win: apply in replay order */
	for (size_t i = 0; i < s->nov; i++) {
		const struct vhdx_log_item *it = &s->ov[i];
		uint64_t a = KL_MAX(off, it->file_off), z = KL_MIN(end, it->file_off + it->len);

		if (a >= z)
			continue;
		if (it->log_pos == UINT64_MAX) {
			memset(buf + (a - off), 0, (size_t)(z - a));
			continue;
		}
		KL_TRY(item_sector(d, it, sec));
		memcpy(buf + (a - off), sec + (a - it->file_off), (size_t)(z - a));
	}
	return 0;
}

int vhdx_log_commit(struct blk_dev *d)
{
	struct vhdx_state *s = d->priv;
	uint8_t sec[VHDX_LOG_SECTOR];
	static const uint8_t zero[65536];
	uint64_t size;
	int rc = 0;

	KL_TRY(kl_io_event("vhdx.log_replay"));
	for (size_t i = 0; i < s->nov && rc == 0; i++) {
		const struct vhdx_log_item *it = &s->ov[i];

		if (it->log_pos == UINT64_MAX) {
			for (uint64_t done = 0; done < it->len && rc == 0;) {
				size_t n = (size_t)KL_MIN(it->len - done, (uint64_t)sizeof(zero));

				rc = kl_io_pwrite(d->file, it->file_off + done, zero, n);
				done += n;
			}
		} else {
			rc = item_sector(d, it, sec);
			if (rc == 0)
				rc = kl_io_pwrite(d->file, it->file_off, sec, VHDX_LOG_SECTOR);
		}
	}
	if (rc == 0)
		rc = kl_io_size(d->file, &size);
	if (rc == 0 && size < s->log_last_file_off)
		rc = kl_io_truncate(d->file, s->log_last_file_off);
	if (rc == 0)
		rc = kl_io_sync(d->file);
	if (rc < 0) {
		s->broken = true;
		return kl_err_prefix(rc, "%s: replaying the VHDX log", d->filename);
	}
	/* the log is applied: LogGuid zero means "nothing to replay" (2.2.2) */
	memset(s->log_guid, 0, 16);
	KL_TRY(vhdx_update_headers(d, false));
	vhdx_log_free(s);
	s->log_state = VHDX_LOG_REPLAYED;
	return 0;
}

void vhdx_log_free(struct vhdx_state *s)
{
	kl_free(s->ov);
	s->ov = NULL;
	s->nov = 0;
	s->ov_cap = 0;
}
