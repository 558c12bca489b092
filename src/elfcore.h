/* SPDX-License-Identifier: MIT */
/*
 * ELF core files: pure encoding (no system calls), x86_64. The caller
 * gathers what a core holds (threads, mappings, /proc files) and this
 * turns it into bytes: notes, program headers, the file layout.
 */
#ifndef UFFDWP_ELFCORE_H
#define UFFDWP_ELFCORE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/user.h>

#define UFFDWP__HIDDEN_EC __attribute__((visibility("hidden")))

/* Ours: the ranges the target discarded (MADV_DONTNEED, munmap) while its
 * memory was being saved, as pairs of 64-bit start, end; name "UFFDWP". */
#define UFFDWP__NT_DISCARDED 0x55460001

/* A growing buffer of notes. */
struct uffdwp__notes {
	unsigned char *data;
	size_t len, cap;
};

/* Append one note (name, type, desc padded to 4 bytes). 0 or -ENOMEM. */
int uffdwp__note_add(struct uffdwp__notes *n, const char *name, uint32_t type,
		     const void *desc, size_t desc_len) UFFDWP__HIDDEN_EC;
void uffdwp__notes_free(struct uffdwp__notes *n) UFFDWP__HIDDEN_EC;

/* What the process notes say about it (from /proc/PID/stat, status, cmdline). */
struct uffdwp__core_process {
	pid_t pid, ppid, pgrp, sid;
	uid_t uid;
	gid_t gid;
	char state;        /* /proc state letter */
	int nice;
	unsigned long flags;
	char fname[16];    /* comm */
	char psargs[80];   /* command line, arguments separated by spaces */
};

/* One thread's registers, as the stop found them. */
struct uffdwp__core_thread {
	pid_t tid;
	const struct user_regs_struct *regs;
	const struct user_fpregs_struct *fpregs;
	const void *xstate;   /* NT_X86_XSTATE image, or NULL */
	size_t xstate_len;
	const siginfo_t *siginfo;
	uint64_t sigpend, sighold;
};

/* A thread's NT_PRSTATUS; its NT_FPREGSET and NT_X86_XSTATE (the kernel
 * writes the process notes between the first thread's two). 0 or -ENOMEM. */
int uffdwp__note_prstatus(struct uffdwp__notes *n, const struct uffdwp__core_process *p,
			  const struct uffdwp__core_thread *t) UFFDWP__HIDDEN_EC;
int uffdwp__note_regsets(struct uffdwp__notes *n, const struct uffdwp__core_thread *t)
	UFFDWP__HIDDEN_EC;
int uffdwp__note_prpsinfo(struct uffdwp__notes *n, const struct uffdwp__core_process *p)
	UFFDWP__HIDDEN_EC;

/* One file-backed mapping for NT_FILE. */
struct uffdwp__core_file {
	uint64_t start, end, pgoff;  /* pgoff in pages */
	const char *path;
};

/* NT_FILE. 0, -ENOMEM. */
int uffdwp__note_file(struct uffdwp__notes *n, const struct uffdwp__core_file *files,
		      size_t nfiles, size_t page) UFFDWP__HIDDEN_EC;

/*
 * NT_X86_XSTATE as gcore writes it and gdb reads it: each XSAVE component
 * moved from this CPU's offset (CPUID leaf 0xD; AMD's differ) to the
 * offset gdb assumes (Intel's). xstate is the kernel's image (ptrace
 * NT_X86_XSTATE); uffdwp__xstate_gdb_size() says how long the result is
 * (0: no image), uffdwp__xstate_for_gdb() writes it.
 */
size_t uffdwp__xstate_gdb_size(const void *xstate, size_t len) UFFDWP__HIDDEN_EC;
void uffdwp__xstate_for_gdb(const void *xstate, size_t len, void *out, size_t out_len)
	UFFDWP__HIDDEN_EC;

/* One PT_LOAD. */
struct uffdwp__core_segment {
	uint64_t vaddr, memsz;
	uint64_t filesz;  /* memsz when its contents are in the core, else 0 */
	uint32_t flags;   /* PF_R, PF_W, PF_X */
	uint64_t offset;  /* set by uffdwp__core_layout() */
};

/* Place the segments (page-aligned, after the headers) and the notes
 * (after the segments, so that notes made once the memory is saved do not
 * move it): sets each segment's offset and returns the notes' offset. */
uint64_t uffdwp__core_layout(struct uffdwp__core_segment *segs, size_t nsegs, size_t page)
	UFFDWP__HIDDEN_EC;

/* Bytes of ELF header and program headers for nsegs segments. */
size_t uffdwp__core_headers_size(size_t nsegs) UFFDWP__HIDDEN_EC;

/* Encode the ELF header and the program headers (PT_NOTE, then the
 * segments) into out (uffdwp__core_headers_size(nsegs) bytes). */
void uffdwp__core_headers(unsigned char *out, const struct uffdwp__core_segment *segs,
			  size_t nsegs, uint64_t notes_offset, size_t notes_len, size_t page)
	UFFDWP__HIDDEN_EC;

#endif
