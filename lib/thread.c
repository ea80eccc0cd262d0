/*
 * lib/thread.c - a pool of persistent worker threads for parallel loops.
 */
#include "kl.h"

#include <pthread.h>
#include <unistd.h>

struct kl_pool {
	pthread_t *th;
	int n;		 /* worker threads (the caller works too) */
	pthread_mutex_t lock;
	pthread_cond_t start, done;
	uint64_t epoch;	 /* bumped per run */
	int (*fn)(void *, size_t);
	void *arg;
	size_t items, next;
	int busy;	 /* workers still in the current run */
	int err;
	bool quit;
};

int kl_ncpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (int)KL_MIN(n, 256L) : 1;
}

/* Take items until none are left; record the first error. */
static void work(struct kl_pool *p)
{
	for (;;) {
		size_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
		int rc;

		if (i >= p->items)
			return;
		rc = p->fn(p->arg, i);
		if (rc < 0) {
			pthread_mutex_lock(&p->lock);
			if (!p->err)
				p->err = rc;
			pthread_mutex_unlock(&p->lock);
			/* stop handing out work */
			__atomic_store_n(&p->next, p->items, __ATOMIC_RELAXED);
		}
	}
}

static void *worker(void *opaque)
{
	struct kl_pool *p = opaque;
	uint64_t seen = 0;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->quit && p->epoch == seen)
			pthread_cond_wait(&p->start, &p->lock);
		if (p->quit)
			break;
		seen = p->epoch;
		pthread_mutex_unlock(&p->lock);
		work(p);
		pthread_mutex_lock(&p->lock);
		if (--p->busy == 0)
			pthread_cond_signal(&p->done);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int kl_pool_new(int nthreads, struct kl_pool **out)
{
	struct kl_pool *p = kl_calloc(1, sizeof(*p));

	*out = NULL;
	if (!p)
		return -ENOMEM;
	if (nthreads <= 0)
		nthreads = kl_ncpus();
	p->n = nthreads - 1;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->start, NULL);
	pthread_cond_init(&p->done, NULL);
	if (p->n > 0) {
		p->th = kl_calloc((size_t)p->n, sizeof(*p->th));
		if (!p->th) {
			p->n = 0; /* no threads to join */
			kl_pool_free(p);
			return -ENOMEM;
		}
	}
	for (int i = 0; i < p->n; i++) {
		if (pthread_create(&p->th[i], NULL, worker, p) != 0) {
			p->n = i;
			kl_pool_free(p);
			return kl_err(-EAGAIN, "cannot start worker threads");
		}
	}
	*out = p;
	return 0;
}

int kl_pool_threads(const struct kl_pool *p)
{
	return p->n + 1;
}

int kl_pool_run(struct kl_pool *p, size_t n, int (*fn)(void *arg, size_t i), void *arg)
{
	int rc;

	if (n == 0)
		return 0;
	pthread_mutex_lock(&p->lock);
	p->fn = fn;
	p->arg = arg;
	p->items = n;
	p->next = 0;
	p->err = 0;
	p->busy = p->n;
	p->epoch++;
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->lock);
	work(p);
	pthread_mutex_lock(&p->lock);
	while (p->busy > 0)
		pthread_cond_wait(&p->done, &p->lock);
	rc = p->err;
	pthread_mutex_unlock(&p->lock);
	return rc;
}

void kl_pool_free(struct kl_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->quit = true;
	pthread_cond_broadcast(&p->start);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	kl_free(p->th);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->start);
	pthread_cond_destroy(&p->done);
	kl_free(p);
}
