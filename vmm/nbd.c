/*
 * vmm/nbd.c - a minimal NBD server, so the qemu engine reads the disk
 * through keel's format layer (any format, any snapshot, the same overlay)
 * and never opens the image itself.
 *
 * Protocol (NetworkBlockDevice doc/proto.md): fixed newstyle handshake with
 * NO_ZEROES; options EXPORT_NAME, GO, INFO, ABORT and LIST are answered, the
 * rest get ERR_UNSUP (so QEMU falls back to simple replies and no metadata
 * contexts). Transmission: READ, WRITE (into the overlay; refused with EPERM
 * when the export is read-only), FLUSH, TRIM (ignored), DISC.
 *
 * Socket: an abstract Unix socket, so no file exists to be left behind; the
 * server accepts one connection, and only from the QEMU child it was told
 * about (SO_PEERCRED). Everything the client sends is bounded: option
 * lengths, request lengths (32 MiB), offsets against the disk size.
 */
#define _GNU_SOURCE
#include "vmm/vmm_int.h"

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define NBD_MAGIC 0x4e42444d41474943ULL /* "NBDMAGIC" */
#define NBD_IHAVEOPT 0x49484156454f5054ULL
#define NBD_REP_MAGIC 0x3e889045565a9ULL
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u

#define NBD_FLAG_FIXED_NEWSTYLE 1
#define NBD_FLAG_NO_ZEROES 2
#define NBD_FLAG_HAS_FLAGS 1
#define NBD_FLAG_READ_ONLY 2
#define NBD_FLAG_SEND_FLUSH 4
#define NBD_FLAG_SEND_TRIM 32

#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_ABORT 2
#define NBD_OPT_LIST 3
#define NBD_OPT_INFO 6
#define NBD_OPT_GO 7

#define NBD_REP_ACK 1
#define NBD_REP_SERVER 2
#define NBD_REP_INFO 3
#define NBD_REP_ERR_UNSUP 0x80000001u
#define NBD_INFO_EXPORT 0

#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4

#define NBD_MAX_OPTION 4096
#define NBD_MAX_REQUEST (32u << 20)

struct vmm_nbd {
	struct vmm_disk *disk;
	bool writable;
	int lfd;
	int cfd;
	int stop_pipe[2];
	_Atomic pid_t peer;
	pthread_t thread;
	bool started;
	uint8_t *buf;
};

static int nbd_wait(struct vmm_nbd *n, int fd)
{
	struct pollfd p[2] = { { fd, POLLIN, 0 }, { n->stop_pipe[0], POLLIN, 0 } };

	for (;;) {
		int r = poll(p, 2, -1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (p[1].revents)
			return -ECANCELED;
		return 0;
	}
}

static int nbd_read(struct vmm_nbd *n, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t r;

		KL_TRY(nbd_wait(n, n->cfd));
		r = read(n->cfd, p, len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -EPIPE;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

static int nbd_write(struct vmm_nbd *n, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t r = send(n->cfd, p, len, MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -EPIPE;
		p += r;
		len -= (size_t)r;
	}
	return 0;
}

static int opt_reply(struct vmm_nbd *n, uint32_t opt, uint32_t type, const void *data,
		     uint32_t len)
{
	uint8_t h[20];

	put_be64(h, NBD_REP_MAGIC);
	put_be32(h + 8, opt);
	put_be32(h + 12, type);
	put_be32(h + 16, len);
	KL_TRY(nbd_write(n, h, sizeof(h)));
	return len ? nbd_write(n, data, len) : 0;
}

static uint16_t tx_flags(const struct vmm_nbd *n)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_TRIM;

	if (!n->writable)
		f |= NBD_FLAG_READ_ONLY;
	return f;
}

/* Returns 1 when transmission starts, 0 to keep negotiating, < 0 to hang up. */
static int nbd_option(struct vmm_nbd *n, bool no_zeroes)
{
	uint8_t h[16], data[NBD_MAX_OPTION];
	uint32_t opt, len;

	KL_TRY(nbd_read(n, h, sizeof(h)));
	if (get_be64(h) != NBD_IHAVEOPT)
		return -EPROTO;
	opt = get_be32(h + 8);
	len = get_be32(h + 12);
	if (len > sizeof(data))
		return -EPROTO;
	KL_TRY(nbd_read(n, data, len));
	switch (opt) {
	case NBD_OPT_EXPORT_NAME: {
		uint8_t r[10 + 124] = { 0 };

		put_be64(r, vmm_disk_size(n->disk));
		put_be16(r + 8, tx_flags(n));
		KL_TRY(nbd_write(n, r, no_zeroes ? 10 : sizeof(r)));
		return 1;
	}
	case NBD_OPT_INFO:
	case NBD_OPT_GO: {
		uint8_t info[12];

		put_be16(info, NBD_INFO_EXPORT);
		put_be64(info + 2, vmm_disk_size(n->disk));
		put_be16(info + 10, tx_flags(n));
		KL_TRY(opt_reply(n, opt, NBD_REP_INFO, info, sizeof(info)));
		KL_TRY(opt_reply(n, opt, NBD_REP_ACK, NULL, 0));
		return opt == NBD_OPT_GO ? 1 : 0;
	}
	case NBD_OPT_LIST: {
		uint8_t s[4] = { 0 }; /* one export, the empty name */

		KL_TRY(opt_reply(n, opt, NBD_REP_SERVER, s, sizeof(s)));
		KL_TRY(opt_reply(n, opt, NBD_REP_ACK, NULL, 0));
		return 0;
	}
	case NBD_OPT_ABORT:
		opt_reply(n, opt, NBD_REP_ACK, NULL, 0);
		return -ECONNABORTED;
	default:
		KL_TRY(opt_reply(n, opt, NBD_REP_ERR_UNSUP, NULL, 0));
		return 0;
	}
}

static int simple_reply(struct vmm_nbd *n, uint32_t err, const uint8_t *handle, const void *data,
			uint32_t len)
{
	uint8_t r[16];

	put_be32(r, NBD_SIMPLE_REPLY_MAGIC);
	put_be32(r + 4, err);
	memcpy(r + 8, handle, 8);
	KL_TRY(nbd_write(n, r, sizeof(r)));
	return len ? nbd_write(n, data, len) : 0;
}

static int nbd_transmission(struct vmm_nbd *n)
{
	for (;;) {
		uint8_t q[28];
		uint16_t type;
		uint64_t off;
		uint32_t len;
		int rc;

		KL_TRY(nbd_read(n, q, sizeof(q)));
		if (get_be32(q) != NBD_REQUEST_MAGIC)
			return -EPROTO;
		type = get_be16(q + 6);
		off = get_be64(q + 16);
		len = get_be32(q + 24);
		switch (type) {
		case NBD_CMD_READ:
			if (len > NBD_MAX_REQUEST)
				return -EPROTO;
			if (!kl_range_ok(off, len, vmm_disk_size(n->disk))) {
				KL_TRY(simple_reply(n, EINVAL, q + 8, NULL, 0));
				break;
			}
			rc = vmm_disk_read(n->disk, off, n->buf, len);
			kl_err_clear();
			KL_TRY(simple_reply(n, rc < 0 ? EIO : 0, q + 8, n->buf, rc < 0 ? 0 : len));
			break;
		case NBD_CMD_WRITE:
			if (len > NBD_MAX_REQUEST)
				return -EPROTO;
			KL_TRY(nbd_read(n, n->buf, len));
			if (!n->writable)
				rc = -EPERM;
			else if (!kl_range_ok(off, len, vmm_disk_size(n->disk)))
				rc = -EINVAL;
			else
				rc = vmm_disk_write(n->disk, off, n->buf, len);
			kl_err_clear();
			KL_TRY(simple_reply(n, rc == -EPERM ? EPERM : rc == -EINVAL ? EINVAL :
					    rc < 0 ? ENOSPC : 0, q + 8, NULL, 0));
			break;
		case NBD_CMD_FLUSH:
		case NBD_CMD_TRIM:
			KL_TRY(simple_reply(n, 0, q + 8, NULL, 0));
			break;
		case NBD_CMD_DISC:
			return 0;
		default:
			KL_TRY(simple_reply(n, EINVAL, q + 8, NULL, 0));
			break;
		}
	}
}

static void *nbd_thread(void *arg)
{
	struct vmm_nbd *n = arg;
	uint8_t hello[18], cflags[4];
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	int rc;

	for (;;) {
		if (nbd_wait(n, n->lfd) < 0)
			return NULL;
		n->cfd = accept4(n->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (n->cfd < 0)
			continue;
		/* only the QEMU we started may read the disk; its pid is set
		 * right after fork, long before it can connect, but wait a little */
		for (int i = 0; i < 100 && !atomic_load(&n->peer); i++)
			usleep(10000);
		if (atomic_load(&n->peer) && (getsockopt(n->cfd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 ||
				cred.pid != atomic_load(&n->peer))) {
			close(n->cfd);
			n->cfd = -1;
			continue;
		}
		break;
	}
	put_be64(hello, NBD_MAGIC);
	put_be64(hello + 8, NBD_IHAVEOPT);
	put_be16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	if (nbd_write(n, hello, sizeof(hello)) < 0 || nbd_read(n, cflags, 4) < 0)
		return NULL;
	do {
		rc = nbd_option(n, get_be32(cflags) & NBD_FLAG_NO_ZEROES);
	} while (rc == 0);
	if (rc == 1)
		nbd_transmission(n);
	return NULL;
}

int vmm_nbd_start(struct vmm_disk *disk, bool writable, const char *name, struct vmm_nbd **out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct vmm_nbd *n;
	size_t nl = strlen(name);
	int rc;

	*out = NULL;
	if (nl + 1 > sizeof(sa.sun_path))
		return kl_err(-ENAMETOOLONG, "NBD socket name too long");
	n = kl_calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->disk = disk;
	n->writable = writable;
	n->lfd = n->cfd = -1;
	n->stop_pipe[0] = n->stop_pipe[1] = -1;
	n->buf = kl_malloc(NBD_MAX_REQUEST);
	if (!n->buf) {
		rc = -ENOMEM;
		goto err;
	}
	if (pipe2(n->stop_pipe, O_CLOEXEC) < 0) {
		rc = kl_err(-errno, "pipe: %s", strerror(errno));
		goto err;
	}
	n->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (n->lfd < 0) {
		rc = kl_err(-errno, "socket: %s", strerror(errno));
		goto err;
	}
	memcpy(sa.sun_path + 1, name, nl); /* abstract: leading NUL, no file */
	if (bind(n->lfd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
							    1 + nl)) < 0 ||
	    listen(n->lfd, 1) < 0) {
		rc = kl_err(-errno, "NBD socket @%s: %s", name, strerror(errno));
		goto err;
	}
	rc = pthread_create(&n->thread, NULL, nbd_thread, n);
	if (rc) {
		rc = kl_err(-rc, "NBD thread: %s", strerror(rc));
		goto err;
	}
	n->started = true;
	*out = n;
	return 0;
err:
	vmm_nbd_stop(n);
	return rc;
}

void vmm_nbd_set_peer(struct vmm_nbd *n, pid_t pid)
{
	atomic_store(&n->peer, pid);
}

void vmm_nbd_stop(struct vmm_nbd *n)
{
	if (!n)
		return;
	if (n->started) {
		if (write(n->stop_pipe[1], "x", 1) < 0) {
			/* the thread also leaves when the client hangs up */
		}
		pthread_join(n->thread, NULL);
	}
	if (n->cfd >= 0)
		close(n->cfd);
	if (n->lfd >= 0)
		close(n->lfd);
	if (n->stop_pipe[0] >= 0)
		close(n->stop_pipe[0]);
	if (n->stop_pipe[1] >= 0)
		close(n->stop_pipe[1]);
	kl_free(n->buf);
	kl_free(n);
}
