/*
 * replicate/s3-pool.c - a few worker threads for parallel uploads and
 * downloads, fed from a bounded queue.
 *
 * The queue bound is the back-pressure that keeps memory flat: the
 * producer (reading and packing the image) blocks while `queue` jobs wait,
 * so at most threads + queue packs are in memory at once.
 */
#include "replicate/s3_int.h"

#include <string.h>

struct pool_job {
	repl_job_fn fn;
	void *arg;
};

struct repl_pool {
	pthread_t *threads;
	int nthreads;
	struct pool_job *q;
	int cap, head, count;
	int running; /* jobs taken but not finished */
	bool stop;
	int err;
	char errmsg[512];
	pthread_mutex_t lock;
	pthread_cond_t not_empty, not_full, idle;
};

static void *pool_main(void *arg)
{
	struct repl_pool *p = arg;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		struct pool_job j;
		int rc;

		while (!p->count && !p->stop)
			pthread_cond_wait(&p->not_empty, &p->lock);
		if (!p->count && p->stop)
			break;
		j = p->q[p->head];
		p->head = (p->head + 1) % p->cap;
		p->count--;
		p->running++;
		pthread_cond_signal(&p->not_full);
		if (p->err) {
			/* after a failure the remaining jobs still run their
			 * cleanup: fn owns arg, so call it with the error known */
			pthread_mutex_unlock(&p->lock);
			rc = j.fn(j.arg);
			pthread_mutex_lock(&p->lock);
		} else {
			pthread_mutex_unlock(&p->lock);
			kl_err_clear();
			rc = j.fn(j.arg);
			pthread_mutex_lock(&p->lock);
			if (rc < 0 && !p->err) {
				p->err = rc;
				snprintf(p->errmsg, sizeof(p->errmsg), "%s", kl_errmsg());
			}
		}
		p->running--;
		if (!p->count && !p->running)
			pthread_cond_broadcast(&p->idle);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

int repl_pool_new(int threads, int queue, struct repl_pool **out)
{
	struct repl_pool *p = kl_calloc(1, sizeof(*p));

	*out = NULL;
	if (!p)
		return -ENOMEM;
	p->cap = KL_MAX(queue, 1);
	p->q = kl_calloc((size_t)p->cap, sizeof(*p->q));
	p->threads = kl_calloc((size_t)KL_MAX(threads, 1), sizeof(*p->threads));
	if (!p->q || !p->threads) {
		kl_free(p->q);
		kl_free(p->threads);
		kl_free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->not_empty, NULL);
	pthread_cond_init(&p->not_full, NULL);
	pthread_cond_init(&p->idle, NULL);
	for (int i = 0; i < KL_MAX(threads, 1); i++) {
		if (pthread_create(&p->threads[i], NULL, pool_main, p) != 0)
			break;
		p->nthreads++;
	}
	if (!p->nthreads) {
		repl_pool_free(p);
		return kl_err(-EAGAIN, "cannot start worker threads");
	}
	*out = p;
	return 0;
}

int repl_pool_submit(struct repl_pool *p, repl_job_fn fn, void *arg)
{
	int rc = 0;

	pthread_mutex_lock(&p->lock);
	while (p->count == p->cap && !p->err)
		pthread_cond_wait(&p->not_full, &p->lock);
	if (p->err) {
		rc = p->err;
		kl_err(rc, "%s", p->errmsg);
	} else {
		p->q[(p->head + p->count) % p->cap] = (struct pool_job){ fn, arg };
		p->count++;
		pthread_cond_signal(&p->not_empty);
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

int repl_pool_wait(struct repl_pool *p)
{
	int rc;

	pthread_mutex_lock(&p->lock);
	while (p->count || p->running)
		pthread_cond_wait(&p->idle, &p->lock);
	rc = p->err;
	if (rc)
		kl_err(rc, "%s", p->errmsg);
	pthread_mutex_unlock(&p->lock);
	return rc;
}

void repl_pool_free(struct repl_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_broadcast(&p->not_empty);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->not_empty);
	pthread_cond_destroy(&p->not_full);
	pthread_cond_destroy(&p->idle);
	kl_free(p->q);
	kl_free(p->threads);
	kl_free(p);
}
