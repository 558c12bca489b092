/* SPDX-License-Identifier: MIT */
/*
 * uffdwp bench [SUITE...] [--json] [--quick] [--size BYTES] [--repeat N]
 *              [--rows SUBSTRING] [-v] [--list]
 *
 * Runs the suites registered with BENCH_SUITE() (bench/bench.h), in name
 * order, and prints their rows: a readable table, or one JSON document
 * (schema: man/uffdwp-bench.1).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>
#include "bench.h"
#include "../tools/commands.h"

#define DEFAULT_REGION_SIZE ((size_t)256 << 20)
#define QUICK_DIVISOR 16

/* The suites' table (BENCH_SUITE). Weak: with no suite linked in, the
 * section does not exist and both are NULL. */
extern const struct bench_suite __start_uffdwp_bench_suites[] __attribute__((weak));
extern const struct bench_suite __stop_uffdwp_bench_suites[] __attribute__((weak));

/* --- latency recorder --- */

/* Bucket of a value: values below BENCH_LAT_SUB map to themselves; above,
 * the power of two picks a group of BENCH_LAT_SUB linear sub-buckets. */
static size_t lat_bucket(uint64_t ns)
{
	unsigned shift;

	if (ns < BENCH_LAT_SUB)
		return (size_t)ns;
	shift = (unsigned)(63 - __builtin_clzll(ns)) - 5;  /* BENCH_LAT_SUB = 1 << 5 */
	return (size_t)(shift + 1) * BENCH_LAT_SUB + (size_t)((ns >> shift) - BENCH_LAT_SUB);
}

/* The middle of a bucket's range of values. */
static uint64_t lat_bucket_value(size_t bucket)
{
	size_t group = bucket / BENCH_LAT_SUB, sub = bucket % BENCH_LAT_SUB;
	unsigned shift;

	if (group == 0)
		return sub;
	shift = (unsigned)group - 1;
	return ((uint64_t)(BENCH_LAT_SUB + sub) << shift) + ((UINT64_C(1) << shift) >> 1);
}

void bench_lat_reset(struct bench_lat *lat)
{
	memset(lat, 0, sizeof(*lat));
}

void bench_lat_add(struct bench_lat *lat, uint64_t ns)
{
	if (lat->count == 0 || ns < lat->min_ns)
		lat->min_ns = ns;
	if (ns > lat->max_ns)
		lat->max_ns = ns;
	lat->count++;
	lat->sum_ns += ns;
	lat->bucket[lat_bucket(ns)]++;
}

void bench_lat_merge(struct bench_lat *into, const struct bench_lat *from)
{
	if (from->count == 0)
		return;
	if (into->count == 0 || from->min_ns < into->min_ns)
		into->min_ns = from->min_ns;
	if (from->max_ns > into->max_ns)
		into->max_ns = from->max_ns;
	into->count += from->count;
	into->sum_ns += from->sum_ns;
	for (size_t i = 0; i < BENCH_LAT_BUCKETS; i++)
		into->bucket[i] += from->bucket[i];
}

uint64_t bench_lat_quantile(const struct bench_lat *lat, double q)
{
	uint64_t rank, seen = 0;

	if (lat->count == 0)
		return 0;
	if (q >= 1.0)
		return lat->max_ns;
	rank = (uint64_t)ceil(q * (double)lat->count);
	if (rank == 0)
		return lat->min_ns;
	for (size_t i = 0; i < BENCH_LAT_BUCKETS; i++) {
		seen += lat->bucket[i];
		if (seen >= rank) {
			uint64_t v = lat_bucket_value(i);

			/* The bucket's middle may lie outside what was seen. */
			return v < lat->min_ns ? lat->min_ns : v > lat->max_ns ? lat->max_ns : v;
		}
	}
	return lat->max_ns;
}

/* --- results --- */

/* A row as stored: percentiles resolved at bench_row() time, since the
 * recorder a suite passes is usually reused for the next row. */
struct stored_row {
	struct bench_row row;
	bool has_lat;
	uint64_t p50, p99, p999;
	const char *skipped;  /* the reason, for a bench_skip() row */
};

struct stored_target {
	const char *row, *baseline;
	double max_ratio;
};

struct bench_state {
	struct stored_row *rows;
	size_t nrows, cap_rows;
	struct stored_target *targets;
	size_t ntargets, cap_targets;
	char **strings;
	size_t nstrings, cap_strings;
	bool out_of_memory;
};

/* Grow *array (of elem bytes, *cap slots) to hold one more; false on ENOMEM. */
static bool grow(struct bench_state *s, void **array, size_t *cap, size_t used, size_t elem)
{
	void *bigger;
	size_t n;

	if (used < *cap)
		return true;
	n = *cap ? 2 * *cap : 16;
	bigger = realloc(*array, n * elem);
	if (!bigger) {
		s->out_of_memory = true;
		return false;
	}
	*array = bigger;
	*cap = n;
	return true;
}

static const char *keep_string(struct bench_state *s, char *str)
{
	if (!str || !grow(s, (void **)&s->strings, &s->cap_strings, s->nstrings,
			  sizeof(*s->strings))) {
		free(str);
		s->out_of_memory = true;
		return "";
	}
	s->strings[s->nstrings++] = str;
	return str;
}

static const char *keep_vformat(struct bench_state *s, const char *fmt, va_list ap)
{
	char *str;

	if (vasprintf(&str, fmt, ap) < 0)
		str = NULL;
	return keep_string(s, str);
}

const char *bench_strdup(struct bench *b, const char *fmt, ...)
{
	const char *str;
	va_list ap;

	va_start(ap, fmt);
	str = keep_vformat(b->state, fmt, ap);
	va_end(ap);
	return str;
}

static struct stored_row *new_row(struct bench_state *s)
{
	if (!grow(s, (void **)&s->rows, &s->cap_rows, s->nrows, sizeof(*s->rows)))
		return NULL;
	memset(&s->rows[s->nrows], 0, sizeof(s->rows[0]));
	return &s->rows[s->nrows++];
}

bool bench_selected(const struct bench *b, const char *name)
{
	return !b->opts->rows || strstr(name, b->opts->rows);
}

void bench_row(struct bench *b, const struct bench_row *row)
{
	struct stored_row *r;

	if (!bench_selected(b, row->name))
		return;
	r = new_row(b->state);
	if (!r)
		return;
	r->row = *row;
	r->row.lat = NULL;
	if (row->lat && row->lat->count) {
		r->has_lat = true;
		r->p50 = bench_lat_quantile(row->lat, 0.50);
		r->p99 = bench_lat_quantile(row->lat, 0.99);
		r->p999 = bench_lat_quantile(row->lat, 0.999);
	}
	bench_note(b, "%s: %.0f ns/%s", row->name,
		   row->ops ? (double)row->ns / (double)row->ops : 0.0, row->unit);
}

void bench_skip(struct bench *b, const char *name, const char *fmt, ...)
{
	struct stored_row *r;
	va_list ap;

	if (!bench_selected(b, name))
		return;
	r = new_row(b->state);
	if (!r)
		return;
	r->row.name = name;
	va_start(ap, fmt);
	r->skipped = keep_vformat(b->state, fmt, ap);
	va_end(ap);
	bench_note(b, "%s: skipped: %s", name, r->skipped);
}

void bench_target(struct bench *b, const char *row, const char *baseline, double max_ratio)
{
	struct bench_state *s = b->state;

	if (!bench_selected(b, row))
		return;
	if (!grow(s, (void **)&s->targets, &s->cap_targets, s->ntargets, sizeof(*s->targets)))
		return;
	s->targets[s->ntargets++] = (struct stored_target){ row, baseline, max_ratio };
}

void bench_note(struct bench *b, const char *fmt, ...)
{
	va_list ap;

	if (!b->opts->verbose)
		return;
	va_start(ap, fmt);
	fputs("bench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static const struct stored_row *find_row(const struct bench_state *s, const char *name)
{
	for (size_t i = 0; name && i < s->nrows; i++)
		if (!strcmp(s->rows[i].row.name, name))
			return &s->rows[i];
	return NULL;
}

static double ns_per_op(const struct stored_row *r)
{
	return r->row.ops ? (double)r->row.ns / (double)r->row.ops : NAN;
}

/* ns_per_op(row) / ns_per_op(baseline), NAN when either is missing or skipped. */
static double ratio_of(const struct bench_state *s, const char *row, const char *baseline)
{
	const struct stored_row *r = find_row(s, row), *base = find_row(s, baseline);

	if (!r || !base || r->skipped || base->skipped)
		return NAN;
	return ns_per_op(r) / ns_per_op(base);
}

/* --- output --- */

/* A JSON string: quotes, backslashes and control characters escaped. */
static void json_string(const char *s)
{
	putchar('"');
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void json_number(double v, int decimals)
{
	if (isnan(v))
		printf("null");
	else
		printf("%.*f", decimals, v);
}

static void print_suite_json(const struct bench_suite *suite, const struct bench_state *s,
			     bool first)
{
	printf("%s    {\"suite\": ", first ? "" : ",\n");
	json_string(suite->name);
	printf(", \"rows\": [");
	for (size_t i = 0; i < s->nrows; i++) {
		const struct stored_row *r = &s->rows[i];

		printf("%s\n      {\"name\": ", i ? "," : "");
		json_string(r->row.name);
		if (r->skipped) {
			printf(", \"skipped\": ");
			json_string(r->skipped);
			printf("}");
			continue;
		}
		printf(", \"unit\": ");
		json_string(r->row.unit);
		printf(", \"ops\": %llu, \"ns\": %llu, \"ns_per_op\": ",
		       (unsigned long long)r->row.ops, (unsigned long long)r->row.ns);
		json_number(ns_per_op(r), 1);
		if (r->has_lat)
			printf(", \"p50_ns\": %llu, \"p99_ns\": %llu, \"p999_ns\": %llu",
			       (unsigned long long)r->p50, (unsigned long long)r->p99,
			       (unsigned long long)r->p999);
		if (r->row.baseline) {
			printf(", \"baseline\": ");
			json_string(r->row.baseline);
			printf(", \"ratio\": ");
			json_number(ratio_of(s, r->row.name, r->row.baseline), 3);
		}
		if (r->row.note) {
			printf(", \"note\": ");
			json_string(r->row.note);
		}
		printf("}");
	}
	printf("\n    ], \"targets\": [");
	for (size_t i = 0; i < s->ntargets; i++) {
		const struct stored_target *t = &s->targets[i];
		double ratio = ratio_of(s, t->row, t->baseline);

		printf("%s\n      {\"row\": ", i ? "," : "");
		json_string(t->row);
		printf(", \"baseline\": ");
		json_string(t->baseline);
		printf(", \"max_ratio\": %.3f, \"ratio\": ", t->max_ratio);
		json_number(ratio, 3);
		printf(", \"met\": %s}", isnan(ratio) ? "null" : ratio <= t->max_ratio ? "true"
											 : "false");
	}
	printf("%s]}", s->ntargets ? "\n    " : "");
}

/* ns with a unit that keeps 3-4 significant digits. */
static const char *human_ns(double ns, char *buf, size_t cap)
{
	if (isnan(ns))
		snprintf(buf, cap, "-");
	else if (ns < 10000)
		snprintf(buf, cap, "%.0f ns", ns);
	else if (ns < 10e6)
		snprintf(buf, cap, "%.1f us", ns / 1e3);
	else
		snprintf(buf, cap, "%.1f ms", ns / 1e6);
	return buf;
}

static void print_suite_table(const struct bench_suite *suite, const struct bench_state *s)
{
	char ratio_text[32], per_op[32], p50[32], p99[32], p999[32];
	int width = 24;

	for (size_t i = 0; i < s->nrows; i++)
		if ((int)strlen(s->rows[i].row.name) > width)
			width = (int)strlen(s->rows[i].row.name);
	printf("\n== %s: %s\n\n", suite->name, suite->summary);
	printf("%-*s %10s %-9s %9s %9s %9s %7s  %s\n", width, "row", "per op", "unit",
	       "p50", "p99", "p99.9", "ratio", "baseline / note");
	for (size_t i = 0; i < s->nrows; i++) {
		const struct stored_row *r = &s->rows[i];
		double ratio;

		if (r->skipped) {
			printf("%-*s %10s %-9s %9s %9s %9s %7s  skipped: %s\n", width, r->row.name,
			       "-", "", "", "", "", "", r->skipped);
			continue;
		}
		ratio = r->row.baseline ? ratio_of(s, r->row.name, r->row.baseline) : NAN;
		ratio_text[0] = '\0';
		if (!isnan(ratio))
			snprintf(ratio_text, sizeof(ratio_text), "%.2fx", ratio);
		printf("%-*s %10s %-9s %9s %9s %9s %7s  %s%s%s\n", width, r->row.name,
		       human_ns(ns_per_op(r), per_op, sizeof(per_op)), r->row.unit ? r->row.unit : "",
		       r->has_lat ? human_ns((double)r->p50, p50, sizeof(p50)) : "",
		       r->has_lat ? human_ns((double)r->p99, p99, sizeof(p99)) : "",
		       r->has_lat ? human_ns((double)r->p999, p999, sizeof(p999)) : "",
		       ratio_text, r->row.baseline ? r->row.baseline : "",
		       r->row.baseline && r->row.note ? "; " : "", r->row.note ? r->row.note : "");
	}
	if (!s->ntargets)
		return;
	printf("\ntargets:\n");
	for (size_t i = 0; i < s->ntargets; i++) {
		const struct stored_target *t = &s->targets[i];
		double ratio = ratio_of(s, t->row, t->baseline);

		ratio_text[0] = '\0';
		if (!isnan(ratio))
			snprintf(ratio_text, sizeof(ratio_text), "%.2fx", ratio);
		printf("  %-*s vs %-28s %7s  (<= %.2fx)  %s\n", width, t->row, t->baseline,
		       isnan(ratio) ? "-" : ratio_text, t->max_ratio,
		       isnan(ratio) ? "n/a" : ratio <= t->max_ratio ? "met" : "MISSED");
	}
}

static void free_state(struct bench_state *s)
{
	for (size_t i = 0; i < s->nstrings; i++)
		free(s->strings[i]);
	free(s->strings);
	free(s->rows);
	free(s->targets);
	memset(s, 0, sizeof(*s));
}

/* --- memory helpers --- */

void *bench_map(size_t len, bool populate)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t page = (size_t)sysconf(_SC_PAGESIZE);

	if (p == MAP_FAILED)
		return NULL;
	/* A huge page would turn a whole 2 MiB into one fault. */
	madvise(p, len, MADV_NOHUGEPAGE);
	for (size_t off = 0; populate && off < len; off += page)
		((volatile char *)p)[off] = 1;
	return p;
}

size_t *bench_page_order(size_t npages, bool shuffled)
{
	size_t *order = malloc((npages ? npages : 1) * sizeof(*order));
	uint64_t state = 0x9e3779b97f4a7c15u;  /* fixed seed: the same order every run */

	if (!order)
		return NULL;
	for (size_t i = 0; i < npages; i++)
		order[i] = i;
	for (size_t i = npages; shuffled && i > 1; i--) {
		size_t j, tmp;

		/* xorshift64*: fast, and good enough to defeat the prefetcher */
		state ^= state >> 12;
		state ^= state << 25;
		state ^= state >> 27;
		j = (size_t)((state * 0x2545f4914f6cdd1du) % i);
		tmp = order[i - 1];
		order[i - 1] = order[j];
		order[j] = tmp;
	}
	return order;
}

/* --- the command --- */

static int by_name(const void *a, const void *b)
{
	const struct bench_suite *x = *(const struct bench_suite *const *)a;
	const struct bench_suite *y = *(const struct bench_suite *const *)b;

	return strcmp(x->name, y->name);
}

static int usage(FILE *out, int status)
{
	fprintf(out, "usage: uffdwp bench [SUITE...] [--json] [--quick] [--size BYTES[K|M|G]]\n"
		     "                    [--repeat N] [--rows SUBSTRING] [-v] [--list]\n\nsuites:\n");
	for (const struct bench_suite *s = __start_uffdwp_bench_suites;
	     s < __stop_uffdwp_bench_suites; s++)
		fprintf(out, "  %-10s %s\n", s->name, s->summary);
	fprintf(out, "\nSee uffdwp-bench(1).\n");
	return status;
}

/* "256M" -> bytes; 0 on a malformed or zero size. */
static size_t parse_size(const char *arg)
{
	char *end;
	unsigned long long v = strtoull(arg, &end, 10);
	unsigned shift = 0;

	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	}
	if (*end || end == arg || v == 0 || v > (SIZE_MAX >> shift))
		return 0;
	return (size_t)v << shift;
}

static const struct bench_suite *find_suite(const char *name)
{
	for (const struct bench_suite *s = __start_uffdwp_bench_suites;
	     s < __stop_uffdwp_bench_suites; s++)
		if (!strcmp(s->name, name))
			return s;
	return NULL;
}

/* The machine's 1-minute load average (-1 unknown): a busy machine
 * explains a noisy run. */
static double load_1min(void)
{
	double load;

	return getloadavg(&load, 1) == 1 ? load : -1.0;
}

static void print_json_header(const struct bench_opts *o, size_t page)
{
	struct utsname u;

	if (uname(&u) < 0)
		strcpy(u.release, "");
	printf("{\n  \"uffdwp_bench\": 1,\n  \"kernel_release\": ");
	json_string(u.release);
	printf(",\n  \"page_size\": %zu,\n  \"cpus\": %ld,\n", page, sysconf(_SC_NPROCESSORS_ONLN));
	printf("  \"loadavg_1min\": %.2f,\n", load_1min());
	printf("  \"options\": {\"size\": %zu, \"quick\": %s, \"repeat\": %u},\n",
	       o->region_size, o->quick ? "true" : "false", o->repeat);
	printf("  \"suites\": [\n");
}

int cmd_bench(int argc, char **argv)
{
	size_t nsuites = (size_t)(__stop_uffdwp_bench_suites - __start_uffdwp_bench_suites);
	const struct bench_suite **chosen = calloc(nsuites ? nsuites : 1, sizeof(*chosen));
	struct bench_opts opts = { .region_size = 0, .repeat = 1 };
	size_t nchosen = 0;
	int status = 0;

	if (!chosen)
		return 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (!strcmp(a, "--json")) {
			opts.json = true;
		} else if (!strcmp(a, "--quick")) {
			opts.quick = true;
		} else if (!strcmp(a, "-v")) {
			opts.verbose = true;
		} else if (!strcmp(a, "--list")) {
			free(chosen);
			for (size_t k = 0; k < nsuites; k++)
				printf("%s\n", __start_uffdwp_bench_suites[k].name);
			return 0;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			free(chosen);
			return usage(stdout, 0);
		} else if (!strcmp(a, "--size") && i + 1 < argc) {
			opts.region_size = parse_size(argv[++i]);
			if (!opts.region_size) {
				fprintf(stderr, "uffdwp bench: bad size '%s'\n", argv[i]);
				free(chosen);
				return 2;
			}
		} else if (!strcmp(a, "--rows") && i + 1 < argc) {
			opts.rows = argv[++i];
		} else if (!strcmp(a, "--repeat") && i + 1 < argc) {
			char *end;
			unsigned long repeat = strtoul(argv[++i], &end, 10);

			/* 1..1000: strtoul would take "-1" as ULONG_MAX */
			opts.repeat = *end || end == argv[i] || argv[i][0] == '-' || repeat > 1000
					      ? 0 : (unsigned)repeat;
			if (opts.repeat == 0) {
				fprintf(stderr, "uffdwp bench: bad repeat '%s'\n", argv[i]);
				free(chosen);
				return 2;
			}
		} else if (a[0] != '-' && find_suite(a) && nchosen < nsuites) {
			chosen[nchosen++] = find_suite(a);
		} else {
			fprintf(stderr, "uffdwp bench: unknown %s '%s'\n",
				a[0] == '-' ? "option" : "suite", a);
			free(chosen);
			return usage(stderr, 2);
		}
	}
	if (!opts.region_size)
		opts.region_size = opts.quick ? DEFAULT_REGION_SIZE / QUICK_DIVISOR
					      : DEFAULT_REGION_SIZE;
	if (nchosen == 0) {
		for (size_t k = 0; k < nsuites; k++)
			chosen[k] = &__start_uffdwp_bench_suites[k];
		nchosen = nsuites;
		qsort(chosen, nchosen, sizeof(*chosen), by_name);
	}

	struct bench_state state = { 0 };
	struct bench b = { .opts = &opts, .page = (size_t)sysconf(_SC_PAGESIZE), .state = &state };

	/* The size must hold whole pages. */
	opts.region_size -= opts.region_size % b.page;
	if (!opts.region_size)
		opts.region_size = b.page;
	if (opts.json)
		print_json_header(&opts, b.page);
	else
		printf("uffdwp bench: %zu MiB regions, %ld CPUs, load average %.2f at start\n",
		       opts.region_size >> 20, sysconf(_SC_NPROCESSORS_ONLN), load_1min());
	for (size_t i = 0; i < nchosen; i++) {
		int ret = chosen[i]->run(&b);

		if (ret < 0) {
			fprintf(stderr, "uffdwp bench: %s: %s\n", chosen[i]->name, strerror(-ret));
			status = 1;
		}
		if (state.out_of_memory) {
			fprintf(stderr, "uffdwp bench: %s: out of memory for results\n",
				chosen[i]->name);
			status = 1;
		}
		if (opts.json)
			print_suite_json(chosen[i], &state, i == 0);
		else
			print_suite_table(chosen[i], &state);
		fflush(stdout);
		free_state(&state);
	}
	if (opts.json)
		printf("\n  ]\n}\n");
	free(chosen);
	return status;
}
