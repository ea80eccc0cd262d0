/*
 * lib/lazy.h - libraries keel loads when a command first needs them rather
 * than at start-up: libarchive (OVA and GCE packages), libxml2 (OVF
 * descriptors) and libcurl (S3). Linked, they and the 33 libraries they
 * pull in (TLS, Kerberos, LDAP, ICU, libstdc++, ...) took 27 of the 33 ms
 * every keel command took to start, whatever it did.
 *
 * Call kl_archive_load() (kl_xml_load(), kl_curl_load()) before the first
 * call through kl_la (kl_lx, kl_lc): it loads the library once, fills the
 * table and returns 0, or fails naming the library and the package to
 * install. The tables keep the library's own names and types:
 * kl_la.archive_read_new().
 */
#ifndef KEEL_LAZY_H
#define KEEL_LAZY_H

/* calls go through kl_lc: curl's type-checking macros would rewrite them */
#define CURL_DISABLE_TYPECHECK
#include <archive.h>
#include <archive_entry.h>
#include <curl/curl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#define KL_ARCHIVE_FUNCS(X)                                                                    \
	X(archive_entry_filetype) X(archive_entry_free) X(archive_entry_new)                   \
	X(archive_entry_pathname) X(archive_entry_set_filetype) X(archive_entry_set_gid)       \
	X(archive_entry_set_mtime) X(archive_entry_set_pathname) X(archive_entry_set_perm)     \
	X(archive_entry_set_size) X(archive_entry_set_uid) X(archive_entry_size)               \
	X(archive_entry_sparse_add_entry) X(archive_entry_sparse_count)                        \
	X(archive_entry_sparse_next) X(archive_entry_sparse_reset)                             \
	X(archive_error_string) X(archive_filter_bytes) X(archive_filter_code)                 \
	X(archive_filter_count) X(archive_read_data_block) X(archive_read_data_skip)           \
	X(archive_read_free) X(archive_read_new) X(archive_read_next_header)                   \
	X(archive_read_open1) X(archive_read_open_filename) X(archive_read_set_callback_data)  \
	X(archive_read_set_read_callback) X(archive_read_set_skip_callback)                    \
	X(archive_read_support_filter_gzip) X(archive_read_support_format_tar)                 \
	X(archive_set_error) X(archive_write_add_filter_gzip) X(archive_write_close)           \
	X(archive_write_data) X(archive_write_free) X(archive_write_header)                    \
	X(archive_write_new) X(archive_write_open) X(archive_write_set_filter_option)          \
	X(archive_write_set_format_gnutar) X(archive_write_set_format_pax)                     \
	X(archive_write_set_format_ustar)

#define KL_XML_FUNCS(X)                                                                        \
	X(xmlInitParser) X(xmlReadMemory) X(xmlGetLastError) X(xmlDocGetRootElement)           \
	X(xmlFreeDoc)

#define KL_CURL_FUNCS(X)                                                                       \
	X(curl_global_init) X(curl_easy_init) X(curl_easy_cleanup) X(curl_easy_reset)          \
	X(curl_easy_setopt) X(curl_easy_perform) X(curl_easy_getinfo) X(curl_easy_strerror)    \
	X(curl_slist_append) X(curl_slist_free_all)

#define KL_LAZY_MEMBER(f) __typeof__(&f) f;

struct kl_archive_api {
	KL_ARCHIVE_FUNCS(KL_LAZY_MEMBER)
};

struct kl_xml_api {
	KL_XML_FUNCS(KL_LAZY_MEMBER)
};

struct kl_curl_api {
	KL_CURL_FUNCS(KL_LAZY_MEMBER)
};

extern struct kl_archive_api kl_la;
extern struct kl_xml_api kl_lx;
extern struct kl_curl_api kl_lc;

int kl_archive_load(void);
int kl_xml_load(void);	/* also runs xmlInitParser */
int kl_curl_load(void); /* also runs curl_global_init */

#endif
