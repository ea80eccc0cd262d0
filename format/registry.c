/*
 * format/registry.c - the one list of format drivers.
 *
 * Order matters only for ties in probing and for listings: formats with a
 * magic number first, raw last because it bids 1 on anything
 * (libarchive's archive_read_support_format_all.c orders its bidders the
 * same way, cheap and specific first).
 */
#include "format/format_int.h"

extern const struct blk_driver blk_keel_driver;
extern const struct blk_driver blk_raw_driver;
extern const struct blk_driver blk_qcow2_driver;
extern const struct blk_driver blk_vhd_driver;
extern const struct blk_driver blk_vdi_driver;
extern const struct blk_driver blk_vmdk_driver;
extern const struct blk_driver blk_ova_driver;
extern const struct blk_driver blk_vhdx_driver;
extern const struct blk_driver blk_gce_driver;
extern const struct blk_driver blk_luks_driver;

const struct blk_driver *const blk_drivers[] = {
	&blk_keel_driver,
	&blk_qcow2_driver,
	&blk_vhd_driver,
	&blk_vdi_driver,
	&blk_vmdk_driver,
	&blk_ova_driver,
	&blk_vhdx_driver,
	&blk_gce_driver,
	&blk_luks_driver,
	&blk_raw_driver,
	NULL,
};
