/* SPDX-License-Identifier: MIT */
/*
 * ELF core encoding (elfcore.h): the same notes and program headers the
 * kernel's own cores carry (fs/binfmt_elf.c), so that gdb and other core
 * readers take ours as they take the kernel's and gcore's. Pure: no system
 * calls.
 */
#include <cpuid.h>
#include <elf.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/procfs.h>
#include "elfcore.h"

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef NT_SIGINFO
#define NT_SIGINFO 0x53494749
#endif
#ifndef NT_FILE
#define NT_FILE 0x46494c45
#endif

static size_t align4(size_t n)
{
	return (n + 3) & ~(size_t)3;
}

int uffdwp__note_add(struct uffdwp__notes *n, const char *name, uint32_t type,
		     const void *desc, size_t desc_len)
{
	size_t namesz = strlen(name) + 1;
	size_t need = sizeof(Elf64_Nhdr) + align4(namesz) + align4(desc_len);
	Elf64_Nhdr h = { (Elf64_Word)namesz, (Elf64_Word)desc_len, type };
	unsigned char *at;

	if (n->len + need > n->cap) {
		size_t cap = n->cap ? n->cap : 4096;
		unsigned char *d;

		while (cap < n->len + need)
			cap *= 2;
		d = realloc(n->data, cap);
		if (!d)
			return -ENOMEM;
		n->data = d;
		n->cap = cap;
	}
	at = n->data + n->len;
	memset(at, 0, need);
	memcpy(at, &h, sizeof(h));
	memcpy(at + sizeof(h), name, namesz);
	memcpy(at + sizeof(h) + align4(namesz), desc, desc_len);
	n->len += need;
	return 0;
}

void uffdwp__notes_free(struct uffdwp__notes *n)
{
	free(n->data);
	*n = (struct uffdwp__notes){ 0 };
}

int uffdwp__note_prstatus(struct uffdwp__notes *n, const struct uffdwp__core_process *p,
			  const struct uffdwp__core_thread *t)
{
	struct elf_prstatus st;

	_Static_assert(sizeof(st.pr_reg) == sizeof(*t->regs), "elf_gregset_t is user_regs_struct");
	memset(&st, 0, sizeof(st));
	if (t->siginfo) {
		st.pr_info.si_signo = t->siginfo->si_signo;
		st.pr_info.si_code = t->siginfo->si_code;
		st.pr_info.si_errno = t->siginfo->si_errno;
		st.pr_cursig = (short)t->siginfo->si_signo;
	}
	st.pr_sigpend = t->sigpend;
	st.pr_sighold = t->sighold;
	st.pr_pid = t->tid;
	st.pr_ppid = p->ppid;
	st.pr_pgrp = p->pgrp;
	st.pr_sid = p->sid;
	memcpy(&st.pr_reg, t->regs, sizeof(st.pr_reg));
	st.pr_fpvalid = 1;
	return uffdwp__note_add(n, "CORE", NT_PRSTATUS, &st, sizeof(st));
}

/* Where gdb before 14 (which knows no other layout) and gcore place each
 * XSAVE component: Intel's offsets. Zero for a component they lack. */
static const uint32_t gdb_offsets[10] = {
	[2] = 576,   /* AVX: upper halves of ymm */
	[3] = 960,   /* MPX bound registers */
	[4] = 1024,  /* MPX configuration */
	[5] = 1088,  /* AVX-512 opmask */
	[6] = 1152,  /* AVX-512 upper halves of zmm0-15 */
	[7] = 1664,  /* AVX-512 zmm16-31 */
	[9] = 2688,  /* PKRU */
};

/* The legacy area and XSAVE header: the same on every CPU. */
#define XSAVE_LEGACY_AND_HEADER 576
#define XSAVE_XCR0 464  /* ptrace's (and gdb's) place of XCR0 in the legacy area */

size_t uffdwp__xstate_gdb_size(const void *xstate, size_t len)
{
	uint64_t xfeatures;
	size_t size = XSAVE_LEGACY_AND_HEADER;

	if (len < XSAVE_LEGACY_AND_HEADER)
		return 0;
	memcpy(&xfeatures, (const unsigned char *)xstate + XSAVE_XCR0, sizeof(xfeatures));
	for (unsigned i = 2; i < 10; i++) {
		unsigned eax, ebx, ecx, edx;

		if (!(xfeatures & (1u << i)) || !gdb_offsets[i])
			continue;
		__cpuid_count(0xd, i, eax, ebx, ecx, edx);
		if (gdb_offsets[i] + eax > size)
			size = gdb_offsets[i] + eax;
	}
	return size;
}

void uffdwp__xstate_for_gdb(const void *xstate, size_t len, void *out, size_t out_len)
{
	const unsigned char *src = xstate;
	unsigned char *dst = out;
	uint64_t xfeatures;

	memset(dst, 0, out_len);
	memcpy(dst, src, XSAVE_LEGACY_AND_HEADER);
	memcpy(&xfeatures, src + XSAVE_XCR0, sizeof(xfeatures));
	for (unsigned i = 2; i < 10; i++) {
		unsigned eax, ebx, ecx, edx;

		if (!(xfeatures & (1u << i)) || !gdb_offsets[i])
			continue;
		/* This CPU's offset and size of component i (CPUID leaf 0xD). */
		__cpuid_count(0xd, i, eax, ebx, ecx, edx);
		if (ebx + eax <= len && gdb_offsets[i] + eax <= out_len)
			memcpy(dst + gdb_offsets[i], src + ebx, eax);
	}
}

int uffdwp__note_regsets(struct uffdwp__notes *n, const struct uffdwp__core_thread *t)
{
	int ret = uffdwp__note_add(n, "CORE", NT_FPREGSET, t->fpregs, sizeof(*t->fpregs));
	size_t len = t->xstate ? uffdwp__xstate_gdb_size(t->xstate, t->xstate_len) : 0;
	unsigned char *buf;

	if (ret || !len)
		return ret;
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	uffdwp__xstate_for_gdb(t->xstate, t->xstate_len, buf, len);
	ret = uffdwp__note_add(n, "LINUX", NT_X86_XSTATE, buf, len);
	free(buf);
	return ret;
}

int uffdwp__note_prpsinfo(struct uffdwp__notes *n, const struct uffdwp__core_process *p)
{
	static const char states[] = "RSDTZW";
	struct elf_prpsinfo ps;
	const char *at = strchr(states, p->state);

	memset(&ps, 0, sizeof(ps));
	ps.pr_state = at ? (char)(at - states) : 0;
	ps.pr_sname = p->state ? p->state : '.';
	ps.pr_zomb = p->state == 'Z';
	ps.pr_nice = (char)p->nice;
	ps.pr_flag = p->flags;
	ps.pr_uid = p->uid;
	ps.pr_gid = p->gid;
	ps.pr_pid = p->pid;
	ps.pr_ppid = p->ppid;
	ps.pr_pgrp = p->pgrp;
	ps.pr_sid = p->sid;
	memcpy(ps.pr_fname, p->fname, sizeof(ps.pr_fname));
	memcpy(ps.pr_psargs, p->psargs, sizeof(ps.pr_psargs));
	return uffdwp__note_add(n, "CORE", NT_PRPSINFO, &ps, sizeof(ps));
}

int uffdwp__note_file(struct uffdwp__notes *n, const struct uffdwp__core_file *files,
		      size_t nfiles, size_t page)
{
	size_t len = 2 * sizeof(uint64_t) + nfiles * 3 * sizeof(uint64_t);
	unsigned char *desc, *names;
	uint64_t *w;
	int ret;

	for (size_t i = 0; i < nfiles; i++)
		len += strlen(files[i].path) + 1;
	desc = malloc(len);
	if (!desc)
		return -ENOMEM;
	w = (uint64_t *)(void *)desc;
	w[0] = nfiles;
	w[1] = page;
	names = desc + 2 * sizeof(uint64_t) + nfiles * 3 * sizeof(uint64_t);
	for (size_t i = 0; i < nfiles; i++) {
		size_t l = strlen(files[i].path) + 1;

		w[2 + 3 * i] = files[i].start;
		w[3 + 3 * i] = files[i].end;
		w[4 + 3 * i] = files[i].pgoff;
		memcpy(names, files[i].path, l);
		names += l;
	}
	ret = uffdwp__note_add(n, "CORE", NT_FILE, desc, len);
	free(desc);
	return ret;
}

size_t uffdwp__core_headers_size(size_t nsegs)
{
	return sizeof(Elf64_Ehdr) + (nsegs + 1) * sizeof(Elf64_Phdr);
}

uint64_t uffdwp__core_layout(struct uffdwp__core_segment *segs, size_t nsegs, size_t page)
{
	uint64_t at = uffdwp__core_headers_size(nsegs);

	at = (at + page - 1) & ~(uint64_t)(page - 1);
	for (size_t i = 0; i < nsegs; i++) {
		segs[i].offset = at;
		at += segs[i].filesz;
	}
	return at;
}

void uffdwp__core_headers(unsigned char *out, const struct uffdwp__core_segment *segs,
			  size_t nsegs, uint64_t notes_offset, size_t notes_len, size_t page)
{
	Elf64_Ehdr eh = {
		.e_ident = { ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, ELFCLASS64, ELFDATA2LSB,
			     EV_CURRENT, ELFOSABI_NONE },
		.e_type = ET_CORE,
		.e_machine = EM_X86_64,
		.e_version = EV_CURRENT,
		.e_phoff = sizeof(Elf64_Ehdr),
		.e_ehsize = sizeof(Elf64_Ehdr),
		.e_phentsize = sizeof(Elf64_Phdr),
		.e_phnum = (Elf64_Half)(nsegs + 1 < PN_XNUM ? nsegs + 1 : PN_XNUM),
	};
	Elf64_Phdr note = {
		.p_type = PT_NOTE,
		.p_offset = notes_offset,
		.p_filesz = notes_len,
		.p_align = 4,
	};

	memcpy(out, &eh, sizeof(eh));
	out += sizeof(eh);
	memcpy(out, &note, sizeof(note));
	out += sizeof(note);
	for (size_t i = 0; i < nsegs; i++) {
		Elf64_Phdr ph = {
			.p_type = PT_LOAD,
			.p_flags = segs[i].flags,
			.p_offset = segs[i].offset,
			.p_vaddr = segs[i].vaddr,
			.p_filesz = segs[i].filesz,
			.p_memsz = segs[i].memsz,
			.p_align = page,
		};

		memcpy(out, &ph, sizeof(ph));
		out += sizeof(ph);
	}
}
