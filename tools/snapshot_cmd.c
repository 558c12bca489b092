/* SPDX-License-Identifier: MIT */
/*
 * uffdwp snapshot SUBCOMMAND ...: snapshot files (uffdwp-snapshot(5)).
 *
 *   info FILE...                 what each file holds (header and trailer)
 *   verify FILE...               check every byte of each file
 *   restore -o IMAGE FILE...     replay a chain (full, then incrementals)
 *                                into an image file
 *
 * A corrupt or truncated file is reported on stderr, with the byte offset
 * of the problem, and the exit status is 1; a usage error exits with 2.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "uffdwp.h"
#include "commands.h"

/* Regions listed by `info`; beyond, a count of the rest. */
#define INFO_MAX_REGIONS 16

/* "s" unless n is 1 */
static const char *plural(uint64_t n)
{
	return n == 1 ? "" : "s";
}

/* "1.50 GiB" */
static const char *human_bytes(uint64_t n, char *out, size_t cap)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)n;
	size_t u = 0;

	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(out, cap, "%llu B", (unsigned long long)n);
	else
		snprintf(out, cap, "%.2f %s", v, units[u]);
	return out;
}

/* "2026-01-31 12:00:00.123456789 UTC", or "unknown" for 0. */
static const char *utc_time(uint64_t ns, char *out, size_t cap)
{
	time_t secs = (time_t)(ns / 1000000000u);
	struct tm tm;
	size_t n;

	if (ns == 0 || !gmtime_r(&secs, &tm))
		return "unknown";
	n = strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
	snprintf(out + n, cap - n, ".%09llu UTC", (unsigned long long)(ns % 1000000000u));
	return out;
}

/* in_file: the message is about the file's bytes (else about the restore
 * target, which has no offset to give). */
static void print_error(const char *sub, const char *path, int ret,
			const struct uffdwp_snapshot_error *err, bool in_file)
{
	if (err->message[0] && in_file)
		fprintf(stderr, "uffdwp snapshot %s: %s: at byte %llu: %s (%s)\n", sub, path,
			(unsigned long long)err->offset, err->message, strerror(-ret));
	else if (err->message[0])
		fprintf(stderr, "uffdwp snapshot %s: %s: %s (%s)\n", sub, path, err->message,
			strerror(-ret));
	else if (ret == -ESPIPE)
		fprintf(stderr, "uffdwp snapshot %s: %s: not a regular file (%s needs one%s)\n",
			sub, path, sub, strcmp(sub, "restore") ? "; verify reads pipes" : "");
	else
		fprintf(stderr, "uffdwp snapshot %s: %s: %s\n", sub, path, strerror(-ret));
}

static void print_info(const char *path, const struct uffdwp_snapshot_info *in,
		       const struct uffdwp_snapshot_region *regions, size_t listed)
{
	char a[32], b[32], when[64];

	printf("%s:\n", path);
	printf("  snapshot    0x%016llx, %s", (unsigned long long)in->snapshot_id,
	       in->parent_id ? "incremental" : "full");
	if (in->parent_id)
		printf(" on parent 0x%016llx", (unsigned long long)in->parent_id);
	printf("\n  taken       %s\n", utc_time(in->time_ns, when, sizeof(when)));
	printf("  format      version %u, page size %u\n", in->version, in->page_size);
	printf("  regions     %u, %s\n", in->region_count,
	       human_bytes(in->region_bytes, a, sizeof(a)));
	for (size_t i = 0; i < listed; i++)
		printf("              0x%llx-0x%llx (%s)\n", (unsigned long long)regions[i].addr,
		       (unsigned long long)(regions[i].addr + regions[i].len),
		       human_bytes(regions[i].len, a, sizeof(a)));
	if (listed < in->region_count)
		printf("              ... and %llu more\n",
		       (unsigned long long)(in->region_count - listed));
	printf("  records     %llu: %llu page%s stored (%s), %llu page%s zero\n",
	       (unsigned long long)in->record_count, (unsigned long long)in->page_count,
	       plural(in->page_count), human_bytes(in->page_count * in->page_size, a, sizeof(a)),
	       (unsigned long long)in->zero_count, plural(in->zero_count));
	printf("  file size   %s (%llu bytes)\n", human_bytes(in->file_size, b, sizeof(b)),
	       (unsigned long long)in->file_size);
}

static int usage_error(const char *sub, const char *usage)
{
	fprintf(stderr, "usage: uffdwp snapshot %s %s\n", sub, usage);
	return 2;
}

static int sub_info(int argc, char **argv)
{
	int status = 0;

	if (argc < 2)
		return usage_error("info", "FILE...");
	for (int i = 1; i < argc; i++) {
		struct uffdwp_snapshot_region regions[INFO_MAX_REGIONS];
		struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
		struct uffdwp_snapshot_error err = { .sz = sizeof(err) };
		int ret = uffdwp_snapshot_file_info(argv[i], &info, regions, INFO_MAX_REGIONS, &err);

		if (ret < 0) {
			print_error("info", argv[i], ret, &err, true);
			status = 1;
			continue;
		}
		print_info(argv[i], &info, regions,
			   info.region_count < INFO_MAX_REGIONS ? info.region_count
								: INFO_MAX_REGIONS);
	}
	return status;
}

static int sub_verify(int argc, char **argv)
{
	int status = 0;

	if (argc < 2)
		return usage_error("verify", "FILE...");
	for (int i = 1; i < argc; i++) {
		struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
		struct uffdwp_snapshot_error err = { .sz = sizeof(err) };
		int ret = uffdwp_snapshot_file_verify(argv[i], &info, &err);

		if (ret < 0) {
			print_error("verify", argv[i], ret, &err, true);
			status = 1;
			continue;
		}
		printf("%s: ok: snapshot 0x%016llx, %llu page%s stored, %llu page%s zero\n",
		       argv[i], (unsigned long long)info.snapshot_id,
		       (unsigned long long)info.page_count, plural(info.page_count),
		       (unsigned long long)info.zero_count, plural(info.zero_count));
	}
	return status;
}

static int sub_restore(int argc, char **argv)
{
	static const char usage[] = "-o IMAGE FILE... (a full snapshot, then its incrementals "
				    "in order)";
	struct uffdwp_snapshot_info info = { .sz = sizeof(info) };
	struct uffdwp_snapshot_error err = { .sz = sizeof(err) };
	const char *image = NULL;
	bool created = true;
	char size[32];
	int opt, fd, ret;

	optind = 1;
	while ((opt = getopt(argc, argv, "o:")) != -1) {
		if (opt != 'o')
			return usage_error("restore", usage);
		image = optarg;
	}
	if (!image || optind >= argc)
		return usage_error("restore", usage);

	/*
	 * An image this command created is removed again if the restore fails.
	 * An existing one is opened without O_TRUNC and O_NONBLOCK (a FIFO
	 * nobody reads is ENXIO, not a hang): the library refuses what is not
	 * a regular file, or is one of the inputs, before it changes anything.
	 */
	fd = open(image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0 && errno == EEXIST) {
		created = false;
		fd = open(image, O_WRONLY | O_CLOEXEC | O_NONBLOCK);
	}
	if (fd < 0) {
		fprintf(stderr, "uffdwp snapshot restore: %s: %s\n", image,
			errno == ENXIO ? "not a regular file (a FIFO nobody reads)" : strerror(errno));
		return 1;
	}
	ret = uffdwp_snapshot_restore_fd((const char *const *)argv + optind,
					 (size_t)(argc - optind), fd, &err);
	if (ret == 0 && close(fd) < 0)
		ret = -errno;
	else if (ret < 0)
		close(fd);
	if (ret < 0) {
		/* err.file is the number of files when the image is at fault */
		bool input = optind + (int)err.file < argc;

		print_error("restore", input ? argv[optind + err.file] : image, ret, &err, input);
		if (created)
			unlink(image);
		return 1;
	}
	/* The layout of the image comes from the head of the chain. */
	ret = uffdwp_snapshot_file_info(argv[optind], &info, NULL, 0, &err);
	if (ret < 0) {
		print_error("restore", argv[optind], ret, &err, true);
		return 1;
	}
	printf("%s: %d file%s restored: %u region%s laid end to end in address order, %s\n",
	       image, argc - optind, argc - optind == 1 ? "" : "s", info.region_count,
	       info.region_count == 1 ? "" : "s", human_bytes(info.region_bytes, size, sizeof(size)));
	return 0;
}

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
} subcommands[] = {
	{ "info", sub_info, "FILE...: what each snapshot file holds" },
	{ "verify", sub_verify, "FILE...: check every checksum, address and count" },
	{ "restore", sub_restore, "-o IMAGE FILE...: replay a chain into an image file" },
};

static int usage(FILE *out, int status)
{
	fprintf(out, "usage: uffdwp snapshot SUBCOMMAND [ARGS]\n\nsubcommands:\n");
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		fprintf(out, "  %-8s %s\n", subcommands[i].name, subcommands[i].summary);
	fprintf(out, "\nSee uffdwp-snapshot(5).\n");
	return status;
}

int cmd_snapshot(int argc, char **argv)
{
	if (argc < 2)
		return usage(stderr, 2);
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))
		return usage(stdout, 0);
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		if (!strcmp(argv[1], subcommands[i].name))
			return subcommands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "uffdwp snapshot: unknown subcommand '%s'\n", argv[1]);
	return usage(stderr, 2);
}
