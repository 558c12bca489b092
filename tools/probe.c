/* SPDX-License-Identifier: MIT */
/* uffdwp probe [--json]: what this machine supports, and why. */
#include <errno.h>
#include <stdio.h>
#include <stdbool.h>
#include <string.h>
#include "uffdwp.h"
#include "commands.h"

#define FEATURE_BITS 17

/* What a feature is for and the kernel that brought it. */
static const char *const feature_kernel[FEATURE_BITS] = {
	"5.7", "4.11", "4.11", "4.11", "4.11", "4.11", "4.11", "4.14", "4.14",
	"5.13", "5.14", "5.18", "5.19", "6.4", "6.6", "6.7", "6.8",
};

static const char *open_status(int err)
{
	return err == 0 ? "usable" : strerror(-err);
}

/* One sentence: why AUTO picks what it picks. */
static void auto_reason(const struct uffdwp_probe *p, char *out, size_t cap)
{
	if (p->auto_backend == UFFDWP_BACKEND_KERNEL)
		snprintf(out, cap, "userfaultfd write-protect works (%s)",
			 p->dev_error == 0 ? "via /dev/userfaultfd"
			 : p->syscall_user_mode_only ? "via userfaultfd(2) with UFFD_USER_MODE_ONLY"
						     : "via userfaultfd(2)");
	else if (p->kernel_features)
		snprintf(out, cap, "the kernel's userfaultfd lacks write-protect (needs 5.7)");
	else if (p->syscall_error == -ENOSYS && p->dev_error == -ENOENT)
		snprintf(out, cap, "the kernel has no userfaultfd");
	else
		snprintf(out, cap, "userfaultfd refused: /dev/userfaultfd: %s; userfaultfd(2): %s%s",
			 open_status(p->dev_error), open_status(p->syscall_error),
			 p->unprivileged_userfaultfd == 0 && p->syscall_error == -EPERM
				 ? " (vm.unprivileged_userfaultfd=0)" : "");
}

static void print_json(const struct uffdwp_probe *p, uint64_t defaults)
{
	char reason[256];

	auto_reason(p, reason, sizeof(reason));
	printf("{\n  \"kernel_release\": \"%s\",\n", p->kernel_release);
	printf("  \"dev_userfaultfd\": {\"usable\": %s, \"error\": \"%s\"},\n",
	       p->dev_error ? "false" : "true", p->dev_error ? strerror(-p->dev_error) : "");
	printf("  \"syscall\": {\"usable\": %s, \"error\": \"%s\", \"user_mode_only\": %s},\n",
	       p->syscall_error ? "false" : "true",
	       p->syscall_error ? strerror(-p->syscall_error) : "",
	       p->syscall_user_mode_only ? "true" : "false");
	printf("  \"vm_unprivileged_userfaultfd\": %d,\n", p->unprivileged_userfaultfd);
	printf("  \"vm_max_map_count\": %ld,\n", p->max_map_count);
	printf("  \"thp_mode\": \"%s\",\n", p->thp_mode);
	printf("  \"pagemap_scan\": %s,\n", p->pagemap_scan ? "true" : "false");
	printf("  \"features\": [\n");
	for (int i = 0; i < FEATURE_BITS; i++) {
		uint64_t bit = UINT64_C(1) << i;

		printf("    {\"name\": \"%s\", \"bit\": %d, \"since\": \"%s\", \"kernel\": %s, "
		       "\"emulated\": %s, \"default\": %s}%s\n",
		       uffdwp_feature_name(bit), i, feature_kernel[i],
		       (p->kernel_features & bit) ? "true" : "false",
		       (p->emulated_features & bit) ? "true" : "false",
		       (defaults & bit) ? "true" : "false", i + 1 < FEATURE_BITS ? "," : "");
	}
	printf("  ],\n  \"auto_backend\": \"%s\",\n  \"auto_reason\": \"%s\"\n}\n",
	       uffdwp_backend_name(p->auto_backend), reason);
}

static void print_table(const struct uffdwp_probe *p, uint64_t defaults)
{
	char reason[256];

	auto_reason(p, reason, sizeof(reason));
	printf("kernel                      %s\n", p->kernel_release);
	printf("/dev/userfaultfd            %s\n", open_status(p->dev_error));
	printf("userfaultfd(2)              %s%s\n", open_status(p->syscall_error),
	       p->syscall_user_mode_only ? " (with UFFD_USER_MODE_ONLY)" : "");
	printf("vm.unprivileged_userfaultfd %d\n", p->unprivileged_userfaultfd);
	printf("vm.max_map_count            %ld\n", p->max_map_count);
	printf("transparent huge pages      %s\n", p->thp_mode[0] ? p->thp_mode : "unknown");
	printf("PAGEMAP_SCAN                %s\n", p->pagemap_scan ? "yes" : "no");
	printf("\n%-20s %-6s %-7s %-9s %s\n", "feature", "since", "kernel", "emulated", "default");
	for (int i = 0; i < FEATURE_BITS; i++) {
		uint64_t bit = UINT64_C(1) << i;

		printf("%-20s %-6s %-7s %-9s %s\n", uffdwp_feature_name(bit), feature_kernel[i],
		       (p->kernel_features & bit) ? "yes" : "-",
		       (p->emulated_features & bit) ? "yes" : "-",
		       (defaults & bit) ? "requested" : "");
	}
	printf("\nbackend AUTO picks          %s: %s\n", uffdwp_backend_name(p->auto_backend),
	       reason);
}

int cmd_probe(int argc, char **argv)
{
	struct uffdwp_probe p = { .sz = sizeof(p) };
	bool json = false;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = true;
		} else {
			fprintf(stderr, "usage: uffdwp probe [--json]\n");
			return 2;
		}
	}
	ret = uffdwp_probe(&p);
	if (ret < 0) {
		fprintf(stderr, "uffdwp probe: %s\n", strerror(-ret));
		return 1;
	}
	if (json)
		print_json(&p, UFFDWP_FEATURES_DEFAULT);
	else
		print_table(&p, UFFDWP_FEATURES_DEFAULT);
	return 0;
}
