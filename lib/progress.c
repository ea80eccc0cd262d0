/*
 * lib/progress.c - a progress meter on stderr (bytes, rate, ETA).
 *
 * Shown only on a terminal or when forced with -p, so cron and systemd logs
 * stay clean. Redraws at most ten times a second; workers add concurrently.
 */
#include "kl.h"

#include <pthread.h>
#include <string.h>
#include <unistd.h>

struct kl_progress {
	char label[64];
	uint64_t total;
	uint64_t done;
	double start;
	double last_draw;
	pthread_mutex_t lock;
};

struct kl_progress *kl_progress_start(const char *label, uint64_t total, bool force)
{
	struct kl_progress *p;

	if (!force && !isatty(STDERR_FILENO))
		return NULL;
	p = kl_calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	snprintf(p->label, sizeof(p->label), "%s", label);
	p->total = total;
	p->start = kl_now();
	pthread_mutex_init(&p->lock, NULL);
	return p;
}

static void draw(struct kl_progress *p, bool final)
{
	double now = kl_now();
	double el = now - p->start;
	double rate = el > 0 ? (double)p->done / el : 0;
	double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 100.0;
	char done[32], tot[32], rs[32];
	char bar[31];
	int fill = (int)(pct * 30 / 100);

	if (!final && now - p->last_draw < 0.1)
		return;
	p->last_draw = now;
	if (fill > 30)
		fill = 30;
	memset(bar, '#', (size_t)fill);
	memset(bar + fill, '.', (size_t)(30 - fill));
	bar[30] = '\0';
	kl_format_size(p->done, done, sizeof(done));
	kl_format_size(p->total, tot, sizeof(tot));
	kl_format_size((uint64_t)rate, rs, sizeof(rs));
	if (final) {
		fprintf(stderr, "\r%s [%s] %5.1f%% %s/%s %s/s in %.1fs\033[K\n", p->label, bar, pct,
			done, tot, rs, el);
	} else {
		double eta = rate > 0 && p->total > p->done ? (double)(p->total - p->done) / rate : 0;

		fprintf(stderr, "\r%s [%s] %5.1f%% %s/%s %s/s ETA %.0fs\033[K", p->label, bar, pct,
			done, tot, rs, eta);
	}
	fflush(stderr);
}

void kl_progress_add(struct kl_progress *p, uint64_t n)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->done += n;
	draw(p, false);
	pthread_mutex_unlock(&p->lock);
}

void kl_progress_set(struct kl_progress *p, uint64_t n)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->done = n;
	draw(p, false);
	pthread_mutex_unlock(&p->lock);
}

void kl_progress_finish(struct kl_progress *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->done < p->total)
		p->done = p->total;
	draw(p, true);
	pthread_mutex_unlock(&p->lock);
	pthread_mutex_destroy(&p->lock);
	kl_free(p);
}
