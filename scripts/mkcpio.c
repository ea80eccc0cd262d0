/*
 * scripts/mkcpio.c - pack a directory tree into an initramfs (cpio "newc")
 * with libarchive's writer.
 *
 *   mkcpio ROOTDIR OUT.cpio
 *
 * Entries are written in sorted order with owner root:root and a fixed
 * mtime, so the same tree always gives the same archive. A character device
 * dev/console (5,1) is added when the tree has none: the kernel opens it for
 * /init's stdio before /init runs, and an unprivileged build cannot mknod.
 * Build-time tool only; not part of libkeel.
 */
#define _GNU_SOURCE
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static char **paths;
static size_t npaths, cap;
static size_t root_len;

static int collect(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	if (ftw->level == 0)
		return 0;
	if (npaths == cap) {
		char **n;

		cap = cap ? cap * 2 : 1024;
		n = realloc(paths, cap * sizeof(*paths));
		if (!n)
			return -1;
		paths = n;
	}
	paths[npaths] = strdup(path + root_len + 1);
	if (!paths[npaths])
		return -1;
	npaths++;
	return 0;
}

static int cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int add_file(struct archive *a, int dirfd, const char *rel)
{
	struct archive_entry *e = archive_entry_new();
	char buf[65536], link[4096];
	struct stat st;
	int rc = -1;

	if (!e || fstatat(dirfd, rel, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		fprintf(stderr, "mkcpio: %s: %s\n", rel, strerror(errno));
		goto out;
	}
	archive_entry_set_pathname(e, rel);
	archive_entry_set_mode(e, st.st_mode);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	archive_entry_set_mtime(e, 0, 0);
	archive_entry_set_nlink(e, S_ISDIR(st.st_mode) ? 2 : 1);
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlinkat(dirfd, rel, link, sizeof(link) - 1);

		if (n < 0)
			goto out;
		link[n] = 0;
		archive_entry_set_symlink(e, link);
		archive_entry_set_size(e, 0);
	} else if (S_ISREG(st.st_mode)) {
		archive_entry_set_size(e, st.st_size);
	} else {
		archive_entry_set_size(e, 0);
		archive_entry_set_rdev(e, st.st_rdev);
	}
	if (archive_write_header(a, e) != ARCHIVE_OK) {
		fprintf(stderr, "mkcpio: %s: %s\n", rel, archive_error_string(a));
		goto out;
	}
	if (S_ISREG(st.st_mode)) {
		int fd = openat(dirfd, rel, O_RDONLY);
		ssize_t n;

		if (fd < 0)
			goto out;
		while ((n = read(fd, buf, sizeof(buf))) > 0)
			if (archive_write_data(a, buf, (size_t)n) != n) {
				n = -1;
				break;
			}
		close(fd);
		if (n < 0) {
			fprintf(stderr, "mkcpio: %s: write failed\n", rel);
			goto out;
		}
	}
	rc = 0;
out:
	archive_entry_free(e);
	return rc;
}

int main(int argc, char **argv)
{
	struct archive *a;
	int have_console = 0, dirfd, rc = 1;

	if (argc != 3) {
		fprintf(stderr, "usage: mkcpio ROOTDIR OUT.cpio\n");
		return 2;
	}
	root_len = strlen(argv[1]);
	while (root_len > 1 && argv[1][root_len - 1] == '/')
		root_len--;
	if (nftw(argv[1], collect, 32, FTW_PHYS) != 0) {
		fprintf(stderr, "mkcpio: walking %s failed\n", argv[1]);
		return 1;
	}
	qsort(paths, npaths, sizeof(*paths), cmp);
	dirfd = open(argv[1], O_RDONLY | O_DIRECTORY);
	a = archive_write_new();
	if (dirfd < 0 || !a || archive_write_set_format_cpio_newc(a) != ARCHIVE_OK ||
	    archive_write_add_filter_none(a) != ARCHIVE_OK ||
	    archive_write_open_filename(a, argv[2]) != ARCHIVE_OK) {
		fprintf(stderr, "mkcpio: cannot write %s\n", argv[2]);
		goto out;
	}
	for (size_t i = 0; i < npaths; i++) {
		if (!strcmp(paths[i], "dev/console"))
			have_console = 1;
		if (add_file(a, dirfd, paths[i]) < 0)
			goto out;
	}
	if (!have_console) {
		struct archive_entry *e = archive_entry_new();

		archive_entry_set_pathname(e, "dev/console");
		archive_entry_set_mode(e, S_IFCHR | 0600);
		archive_entry_set_rdev(e, makedev(5, 1));
		archive_entry_set_nlink(e, 1);
		archive_entry_set_size(e, 0);
		if (archive_write_header(a, e) != ARCHIVE_OK) {
			fprintf(stderr, "mkcpio: dev/console: %s\n", archive_error_string(a));
			archive_entry_free(e);
			goto out;
		}
		archive_entry_free(e);
	}
	if (archive_write_close(a) != ARCHIVE_OK) {
		fprintf(stderr, "mkcpio: %s: %s\n", argv[2], archive_error_string(a));
		goto out;
	}
	rc = 0;
out:
	if (a)
		archive_write_free(a);
	if (dirfd >= 0)
		close(dirfd);
	for (size_t i = 0; i < npaths; i++)
		free(paths[i]);
	free(paths);
	return rc;
}
