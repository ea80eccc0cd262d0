/*
 * cli/cmd_convert.c - keel convert [-f FMT] -O FMT [-o opts] SRC DST
 */
#include "cli/cli.h"
#include "convert/convert.h"

#include <stdlib.h>
#include <string.h>

const char cmd_convert_usage[] =
	"usage: keel convert [-f FMT] -O FMT [-o OPTIONS] [-c] [-p] [-j N] [-t CACHE]\n"
	"                    [--verify] [-B BACKING [-F BACKING_FMT]] [--keep-chain]\n"
	"                    [--disk N] [-U] [--output json] SRC[@SNAP] DST\n"
	"       keel convert -O ova [-o OPTIONS] DISK1 [DISK2...] DST.ova\n"
	"\n"
	"Copies what a guest sees in SRC into a new image DST of format FMT. Zero\n"
	"and unallocated ranges of SRC are never read; all-zero blocks are not\n"
	"written, so DST stays sparse. DST is written under a temporary name in\n"
	"its directory and renamed into place only when complete; an error or\n"
	"SIGINT/SIGTERM leaves nothing under DST and SRC is never modified. A\n"
	"temporary file left by a killed run is removed by the next run.\n"
	"\n"
	"A DST that is a block device (an LVM volume, a disk, a loop device) is\n"
	"written in place instead, raw only (-O raw): the device is opened\n"
	"exclusively (refused while mounted or claimed), must hold the whole\n"
	"image, and SRC's zero ranges are written as zeros on it; bytes past the\n"
	"image's end are left alone. An error or a signal leaves such a device\n"
	"partly written. Other special files (character devices, FIFOs) are\n"
	"refused. A DST that is a symbolic link replaces the file it points to.\n"
	"DST '-' is standard output, for -O gce only (written front to back;\n"
	"the summary goes to stderr, and an error leaves a cut stream).\n"
	"\n"
	"The copy is a pipeline: the calling thread walks SRC's extent map and\n"
	"queues 2 MiB chunks; N threads (itself included) read them, each through\n"
	"its own handle, detect zeros, compress and hash; chunks are committed in\n"
	"offset order, so DST is the same bytes whatever N is. A source that\n"
	"reads only front to back (a GCE image.tar.gz) is read by the calling\n"
	"thread alone, in one pass; the others still detect zeros, compress and\n"
	"hash. Memory: the pipeline's buffers stay under 192 MiB whatever the\n"
	"image size: at most max(8, 4N+4) chunks of max(2 MiB, cluster size)\n"
	"with their compressed copies (24 MiB at -j 2 uncompressed, about 50 MiB\n"
	"compressed), plus the formats' metadata caches.\n"
	"\n"
	"  -f FMT        source format (probed when absent). SRC may be - (standard\n"
	"                input) or a FIFO when it is a tar or tar.gz (format gce)\n"
	"  -O FMT        output format (keel help formats), or a package:\n"
	"                  ova  OVF package: vm.ovf, vm.mf, streamOptimized VMDKs\n"
	"                       (one per source: several sources make several disks);\n"
	"                       -o name=VM,cpus=N,memory=MiB,manifest=sha256|sha1,\n"
	"                          network=NAME|none,controller=scsi|sata|ide,\n"
	"                          vmx=NN,os=ID,chunk_size=SIZE\n"
	"                  gce  Google Compute Engine import: disk.raw (sparse) in a\n"
	"                       gzip-compressed tar; -o sparse=off,level=1..9\n"
	"  -o OPTIONS    output format options, k=v,... ('-O FMT -o help' lists them);\n"
	"                profiles:\n"
	"                  azure  fixed VHD with a whole-MiB size (-O vhd)\n"
	"                  esxi   streamOptimized VMDK, version 3 (-O vmdk)\n"
	"  -c            compress the output where the format supports it\n"
	"  -B BACKING    write an overlay of BACKING holding only what differs\n"
	"                (BACKING is recorded as given, relative to DST's directory)\n"
	"  -F FMT        format of BACKING\n"
	"  --keep-chain  keep SRC's parent chain: each layer is converted, base first,\n"
	"                as an overlay of the converted layer below it; parents are\n"
	"                written beside DST as <layer name>.<format extension>\n"
	"  --disk N      the disk to read from a package source with several (OVA):\n"
	"                its number (1, 2, ...), disk id or file name; same as SRC@N;\n"
	"                for a tar (GCE), the member's name (default disk.raw)\n"
	"  -U            copy SRC even while another program holds it open for\n"
	"                writing (--force-share, as qemu-img -U). Without it such a\n"
	"                SRC (a running VM's disk: qemu's write lock; a keel writer)\n"
	"                is refused: a copy of a disk in flux can be torn\n"
	"  -j N          threads that read, compress and hash (default: number of\n"
	"                CPUs plus one, since one of them also commits to DST);\n"
	"                -j 1 runs everything on one thread\n"
	"  -t CACHE      how DST is written:\n"
	"                  direct (default; 'none' is accepted, as in qemu-img)\n"
	"                    data runs of 128 KiB or more go straight to the device\n"
	"                    (O_DIRECT): no copy into the page cache and little\n"
	"                    left for the final fsync. Filesystems that refuse\n"
	"                    O_DIRECT (tmpfs) get writeback.\n"
	"                  writeback  everything through the page cache.\n"
	"                  Both fsync DST (and its directory) around the rename,\n"
	"                  so a finished conversion survives a power cut.\n"
	"                  unsafe  page cache, and nothing is ever fsynced, like\n"
	"                    qemu-img's default: the command returns once the\n"
	"                    bytes are in memory, and a power cut in the next\n"
	"                    seconds can leave DST empty or partly written under\n"
	"                    its final name. For scratch copies, and outputs that\n"
	"                    are synced or checked later. An interrupted run still\n"
	"                    leaves no DST.\n"
	"  --verify      re-read DST and compare its content digest with SRC's;\n"
	"                exit 3 when they differ (DST is then not created)\n"
	"  -p            progress bar even when stderr is not a terminal\n"
	"  --output json summary: bytes read, written, zero bytes skipped, duration\n"
	"  --key-file F, --key-env V\n"
	"                passphrase of an encrypted SRC (.keel, a LUKS volume, or\n"
	"                qcow2 with LUKS from qemu-img), and of DST when it is a\n"
	"                .keel made with -o encrypt=on, a LUKS volume (-O luks) or a\n"
	"                qcow2 with -o encrypt.format=luks (aes-256 xts-plain64; the\n"
	"                key file is taken verbatim there, final newline included,\n"
	"                as qemu and cryptsetup take it)\n"
	"\n"
	"examples:\n"
	"  keel convert -O qcow2 -o compression_type=zstd -c disk.raw disk.qcow2\n"
	"  keel convert -O vmdk -o esxi disk.qcow2 disk.vmdk\n"
	"  keel convert -O ova -o name=web1,cpus=2,memory=4096 disk.qcow2 web1.ova\n"
	"  keel convert -O qcow2 web1.ova@2 data.qcow2\n"
	"  keel convert -O qcow2 gce-export.tar.gz disk.qcow2\n";

int cmd_convert(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "output", required_argument, NULL, CLI_OPT_OUTPUT },
		{ "allow-external-backing", no_argument, NULL, CLI_OPT_ALLOW_EXTERNAL },
		{ "key-file", required_argument, NULL, CLI_OPT_KEY_FILE },
		{ "key-env", required_argument, NULL, CLI_OPT_KEY_ENV },
		{ "verify", no_argument, NULL, 'V' },
		{ "keep-chain", no_argument, NULL, 'K' },
		{ "force-share", no_argument, NULL, 'U' },
		{ "disk", required_argument, NULL, 'D' },
		{ "progress", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct cli_open co = { 0 };
	struct conv_opts o = { 0 };
	struct conv_stats st;
	struct kl_opts *opts = NULL;
	struct kl_json j;
	FILE *out;
	bool json = false;
	uint64_t n;
	int opt, rc;

	while ((opt = getopt_long(argc, argv, "f:O:o:cB:F:j:t:phU", lo, NULL)) != -1) {
		if (cli_open_option(&co, opt, optarg))
			continue;
		switch (opt) {
		case 'O':
			o.dst_fmt = optarg;
			break;
		case 'o':
			if (kl_opts_parse(optarg, &opts) < 0) {
				kl_opts_free(opts);
				return cli_usage("convert", "bad -o '%s'", optarg);
			}
			break;
		case 'c':
			o.compress = true;
			break;
		case 'B':
			o.backing = optarg;
			break;
		case 'F':
			o.backing_fmt = optarg;
			break;
		case 'j':
			if (kl_parse_u64(optarg, &n) < 0 || n < 1 || n > 256) {
				kl_opts_free(opts);
				return cli_usage("convert", "-j takes 1 to 256");
			}
			o.threads = (int)n;
			break;
		case 't':
			if (!strcmp(optarg, "direct") || !strcmp(optarg, "none")) {
				o.cache = CONV_CACHE_DIRECT;
			} else if (!strcmp(optarg, "writeback")) {
				o.cache = CONV_CACHE_WRITEBACK;
			} else if (!strcmp(optarg, "unsafe")) {
				o.cache = CONV_CACHE_UNSAFE;
			} else {
				kl_opts_free(opts);
				return cli_usage("convert",
						 "-t takes direct, writeback or unsafe, not '%s'",
						 optarg);
			}
			break;
		case 'p':
			o.progress = true;
			break;
		case 'V':
			o.verify = true;
			break;
		case 'K':
			o.keep_chain = true;
			break;
		case 'D':
			o.src_select = optarg;
			break;
		case CLI_OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0) {
				kl_opts_free(opts);
				return cli_usage("convert", "bad --output '%s'", optarg);
			}
			break;
		case 'h':
			kl_opts_free(opts);
			printf("%s", cmd_convert_usage);
			return 0;
		default:
			kl_opts_free(opts);
			return cli_usage("convert", NULL);
		}
	}
	if (kl_opts_peek(opts, "help")) {
		kl_opts_free(opts);
		if (!o.dst_fmt)
			return cli_usage("convert", "-o help lists the options of one -O FMT");
		return cli_opts_help("convert", o.dst_fmt, true);
	}
	/* -O ova takes several sources: the disks of one package */
	if (o.dst_fmt && !strcmp(o.dst_fmt, "ova") && argc - optind > 2) {
		o.extra_srcs = (const char *const *)&argv[optind + 1];
		o.n_extra_srcs = (size_t)(argc - optind - 2);
	}
	if (argc - optind - (int)o.n_extra_srcs != 2 || (!o.dst_fmt && !opts)) {
		kl_opts_free(opts);
		return cli_usage("convert", "expected -O FMT, SRC and DST");
	}
	if (co.key_file || co.key_env) {
		rc = cli_load_key(&co, false, false);
		if (rc < 0) {
			kl_opts_free(opts);
			return cli_fail(rc);
		}
	}
	o.src = argv[optind];
	o.dst = argv[argc - 1];
	o.src_fmt = co.format;
	o.src_flags = CLI_COPY_SRC_FLAGS(&co);
	o.dst_opts = opts;
	o.key = co.key;
	o.key_len = co.key_len;
	o.key_nl = co.key_nl;
	o.dst_key = co.key;
	o.dst_key_len = co.key_len;
	o.dst_key_nl = co.key_nl;
	o.progress = o.progress || cli_force_progress;
	conv_install_signal_handlers();
	rc = conv_run(&o, &st);
	kl_opts_free(opts);
	cli_open_release(&co);
	if (rc < 0 && !st.verify_failed)
		return cli_fail(rc);
	/* with DST '-' the image is standard output: the summary goes to stderr */
	out = strcmp(o.dst, "-") == 0 ? stderr : stdout;
	if (json) {
		kl_json_begin(&j, out);
		kl_json_obj_open(&j, NULL);
		kl_json_str(&j, "source", o.src);
		kl_json_str(&j, "destination", o.dst);
		kl_json_str(&j, "format", o.dst_fmt ? o.dst_fmt : "");
		kl_json_u64(&j, "virtual_size", st.virtual_size);
		kl_json_u64(&j, "bytes_read", st.bytes_read);
		kl_json_u64(&j, "bytes_written", st.bytes_written);
		kl_json_u64(&j, "bytes_stored", st.bytes_stored);
		kl_json_u64(&j, "zero_bytes_skipped", st.zero_skipped);
		kl_json_u64(&j, "zero_bytes_detected", st.zero_detected);
		kl_json_u64(&j, "output_size", st.output_size);
		kl_json_u64(&j, "threads", (uint64_t)st.threads);
		kl_json_u64(&j, "memory_bound", st.memory_bound);
		kl_json_u64(&j, "layers", (uint64_t)st.layers);
		kl_json_double(&j, "seconds", st.seconds);
		kl_json_double(&j, "throughput_mb_s",
			       st.seconds > 0 ? (double)st.virtual_size / st.seconds / 1e6 : 0);
		kl_json_bool(&j, "verified", st.verified);
		kl_json_bool(&j, "synced", o.cache != CONV_CACHE_UNSAFE && out == stdout);
		kl_json_obj_close(&j);
		kl_json_end(&j);
	} else if (!cli_quiet && rc == 0) {
		fprintf(out, "converted %s -> %s: %s read, %s written, %s zero skipped, %.2fs%s%s\n",
			o.src, o.dst, cli_size(st.bytes_read), cli_size(st.bytes_written),
			cli_size(st.zero_skipped + st.zero_detected), st.seconds,
			st.verified ? ", verified" : "",
			o.cache == CONV_CACHE_UNSAFE ? ", not synced (-t unsafe)" : "");
	}
	if (st.verify_failed) {
		fprintf(stderr, "keel: error: %s\n", kl_errmsg());
		return CLI_EXIT_DIFF;
	}
	return 0;
}
