/* SPDX-License-Identifier: MIT */
/*
 * Another process (uffdwp_remote_attach(3)): make one of its threads create
 * a userfaultfd and take the descriptor (pidfd_getfd), stopping that thread
 * only (uffdwp_remote_open); stop all its threads for a consistent instant
 * and let them run on (uffdwp_remote_attach, uffdwp_remote_resume).
 *
 * Stopping. Each thread is seized (PTRACE_SEIZE: no signal, no group stop)
 * and interrupted (PTRACE_INTERRUPT); threads born meanwhile are attached
 * by the kernel (PTRACE_O_TRACECLONE) and the task list is read again until
 * it holds no thread we do not have. Nothing asks the kernel to kill the
 * target with us (no PTRACE_O_EXITKILL): if we die, the kernel detaches and
 * every thread runs on.
 *
 * The injected system call, and why we may die at any moment during it.
 * One stopped thread runs userfaultfd(2), then close(2) of its copy once
 * we hold ours. Before its registers change, a signal frame is written
 * below its stack's red zone holding its registers (with the system call
 * restart the kernel would have made already applied), its signal mask and
 * its FPU state, and the thread is pointed at an rt_sigreturn trampoline of
 * its own (glibc's and musl's __restore_rt: "mov $15,%rax; syscall") with
 * every signal blocked. At the system call's entry stop we turn
 * rt_sigreturn into the call we want, with the return address set back to
 * the trampoline. So whenever we die, the thread's next steps are at most
 * our call, then rt_sigreturn, which gives back its registers, mask and FPU
 * state. When we live, we put everything back ourselves, without
 * rt_sigreturn (which would cancel a restart of nanosleep and friends:
 * ERESTART_RESTARTBLOCK), and interrupt the thread again so that the
 * kernel's usual restart of an interrupted system call runs on resume. The
 * thread chosen is preferably one outside any system call.
 */
#include <errno.h>
#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "backend.h"
#include "remote.h"

#ifndef PTRACE_GETSIGMASK
#define PTRACE_GETSIGMASK 0x420a
#define PTRACE_SETSIGMASK 0x420b
#endif
#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

/* Linux's restartable-syscall errors (include/linux/errno.h). */
#define ERESTARTSYS 512
#define ERESTARTNOINTR 513
#define ERESTARTNOHAND 514
#define ERESTART_RESTARTBLOCK 516

/* The largest XSAVE image we accept (AMX tiles included). */
#define XSTATE_MAX 16384

struct uffdwp_remote {
	pid_t pid;
	int pidfd;
	struct uffdwp__remote_thread *threads;
	size_t nthreads, cap;
	bool stopped;
	uint64_t stop_ns, pause_ns;
};

pid_t uffdwp_remote_pid(const struct uffdwp_remote *r)
{
	return r->pid;
}

size_t uffdwp_remote_threads(const struct uffdwp_remote *r)
{
	return r->nthreads;
}

uint64_t uffdwp_remote_pause_ns(const struct uffdwp_remote *r)
{
	return r->pause_ns;
}

int uffdwp_remote_pidfd(const struct uffdwp_remote *r)
{
	return r->pidfd;
}

const struct uffdwp__remote_thread *uffdwp__remote_thread(const struct uffdwp_remote *r,
							   size_t i)
{
	return i < r->nthreads ? &r->threads[i] : NULL;
}

#if defined(__x86_64__)

/* The /proc state letter of a thread, or 0. */
static char thread_state(pid_t pid, pid_t tid)
{
	char path[64], buf[512], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", pid, tid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : 0;
}

static struct uffdwp__remote_thread *find_thread(struct uffdwp_remote *r, pid_t tid)
{
	for (size_t i = 0; i < r->nthreads; i++)
		if (r->threads[i].tid == tid)
			return &r->threads[i];
	return NULL;
}

static int add_thread(struct uffdwp_remote *r, pid_t tid)
{
	if (r->nthreads == r->cap) {
		size_t ncap = r->cap ? 2 * r->cap : 16;
		struct uffdwp__remote_thread *n = realloc(r->threads, ncap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		r->threads = n;
		r->cap = ncap;
	}
	r->threads[r->nthreads++] = (struct uffdwp__remote_thread){ .tid = tid };
	return 0;
}

/*
 * Wait until thread t is in a ptrace stop, letting it go on towards it
 * with request: PTRACE_CONT, or PTRACE_SYSCALL while it runs a call of
 * ours. A signal arriving meanwhile (signal-delivery-stop) is delivered as
 * it came, siginfo and all, when the thread runs its own code (PTRACE_CONT);
 * during a call of ours (every signal blocked but SIGKILL and SIGSTOP) it
 * is kept and raised again at resume. Returns the wait status, or -ESRCH
 * when the thread is gone.
 */
static int wait_stop(struct uffdwp__remote_thread *t, enum __ptrace_request request)
{
	for (;;) {
		int status, sig;

		if (waitpid(t->tid, &status, __WALL) < 0) {
			if (errno == EINTR)
				continue;
			return -ESRCH;
		}
		if (!WIFSTOPPED(status))
			return -ESRCH;
		sig = WSTOPSIG(status);
		if (sig == (SIGTRAP | 0x80) || (status >> 16) != 0)
			return status;
		if (request == PTRACE_SYSCALL)
			t->stop_signal = sig;
		if (ptrace(request, t->tid, 0, request == PTRACE_CONT ? sig : 0) < 0)
			return -ESRCH;
	}
}

/* Seize and interrupt every thread not yet ours, all before waiting for
 * any (they stop in parallel); returns how many were new. */
static int seize_new(struct uffdwp_remote *r)
{
	char path[64];
	struct dirent *d;
	size_t first = r->nthreads;
	DIR *dir;
	int added = 0, ret = 0;

	snprintf(path, sizeof(path), "/proc/%d/task", r->pid);
	dir = opendir(path);
	if (!dir)
		return errno == ENOENT ? -ESRCH : -errno;
	while ((d = readdir(dir)) && ret == 0) {
		pid_t tid = (pid_t)atoi(d->d_name);
		char state;

		if (tid <= 0 || find_thread(r, tid))
			continue;
		state = thread_state(r->pid, tid);
		if (ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACECLONE | PTRACE_O_TRACESYSGOOD) < 0) {
			/* Born of a thread we hold: the kernel attached it to us. */
			if (errno == EPERM && r->nthreads)
				state = 0;
			else if (errno == ESRCH)
				continue;  /* it exited meanwhile */
			else
				ret = -errno;
			if (ret)
				break;
		} else if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0) {
			continue;
		}
		if (!r->stop_ns)
			r->stop_ns = uffdwp__now_ns();
		ret = add_thread(r, tid);
		if (!ret)
			r->threads[r->nthreads - 1].state = state;
	}
	closedir(dir);
	for (size_t i = first; i < r->nthreads;) {
		int st = wait_stop(&r->threads[i], PTRACE_CONT);

		if (st == -ESRCH) {  /* exited before stopping */
			r->threads[i] = r->threads[--r->nthreads];
			continue;
		}
		if (st < 0 && !ret)
			ret = st;
		added++;
		i++;
	}
	return ret ? ret : added;
}

/* Read what the core needs of a stopped thread. */
static int capture(struct uffdwp__remote_thread *t)
{
	struct iovec iov;

	if (ptrace(PTRACE_GETREGS, t->tid, 0, &t->regs) < 0 ||
	    ptrace(PTRACE_GETFPREGS, t->tid, 0, &t->fpregs) < 0 ||
	    ptrace(PTRACE_GETSIGMASK, t->tid, sizeof(t->sigmask), &t->sigmask) < 0)
		return -errno;
	t->xstate = malloc(XSTATE_MAX);
	if (!t->xstate)
		return -ENOMEM;
	iov = (struct iovec){ t->xstate, XSTATE_MAX };
	if (ptrace(PTRACE_GETREGSET, t->tid, NT_X86_XSTATE, &iov) < 0)
		iov.iov_len = 0;  /* no XSAVE: the FXSAVE area is all there is */
	t->xstate_len = iov.iov_len;
	return 0;
}

static int resume_all(struct uffdwp_remote *r)
{
	int ret = 0;

	for (size_t i = 0; i < r->nthreads; i++) {
		struct uffdwp__remote_thread *t = &r->threads[i];

		if (ptrace(PTRACE_DETACH, t->tid, 0, 0) < 0)
			ret = -ESRCH;
		/* A signal that came while we held the thread: its own again. */
		if (t->stop_signal && t->stop_signal != SIGTRAP)
			syscall(SYS_tgkill, r->pid, t->tid, t->stop_signal);
		t->stop_signal = 0;
	}
	r->pause_ns = uffdwp__now_ns() - r->stop_ns;
	r->stopped = false;
	return ret;
}

/* A remote of pid, nothing attached yet. */
static int new_remote(struct uffdwp_remote **out, pid_t pid)
{
	struct uffdwp_remote *r = calloc(1, sizeof(*r));
	int ret;

	if (!r)
		return -ENOMEM;
	r->pid = pid;
	r->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (r->pidfd < 0) {
		ret = -errno;
		free(r);
		return ret == -EINVAL ? -ESRCH : ret;
	}
	*out = r;
	return 0;
}

int uffdwp_remote_attach(struct uffdwp_remote **out, pid_t pid)
{
	struct uffdwp_remote *r;
	int ret;

	if (!out || pid <= 0 || pid == getpid())
		return -EINVAL;
	ret = new_remote(&r, pid);
	if (ret)
		return ret;
	r->stopped = true;
	/* Until a pass finds no new thread: every thread that could clone is
	 * stopped, and its clones were attached by the kernel. */
	while ((ret = seize_new(r)) > 0)
		;
	if (ret == 0 && r->nthreads == 0)
		ret = -ESRCH;
	for (size_t i = 0; i < r->nthreads && ret == 0; i++)
		ret = capture(&r->threads[i]);
	/* The leader first: readers of a core take the first thread as the
	 * process's. */
	for (size_t i = 1; i < r->nthreads && ret == 0; i++)
		if (r->threads[i].tid == pid) {
			struct uffdwp__remote_thread tmp = r->threads[0];

			r->threads[0] = r->threads[i];
			r->threads[i] = tmp;
		}
	if (ret) {
		uffdwp_remote_free(r);
		return ret;
	}
	*out = r;
	return 0;
}

int uffdwp_remote_resume(struct uffdwp_remote *r)
{
	if (!r || !r->stopped)
		return 0;
	return resume_all(r);
}

void uffdwp_remote_free(struct uffdwp_remote *r)
{
	if (!r)
		return;
	uffdwp_remote_resume(r);
	for (size_t i = 0; i < r->nthreads; i++)
		free(r->threads[i].xstate);
	free(r->threads);
	close(r->pidfd);
	free(r);
}

/* ---- the injected system call ----------------------------------------- */

/* The kernel's x86_64 signal frame (arch/x86/include/uapi/asm/sigcontext.h,
 * asm/ucontext.h, asm/sigframe.h): what rt_sigreturn reads. */
struct kernel_sigcontext {
	uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
	uint64_t rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, eflags;
	uint16_t cs, gs, fs, ss;
	uint64_t err, trapno, oldmask, cr2;
	uint64_t fpstate;  /* address of the XSAVE image, 64-byte aligned */
	uint64_t reserved1[8];
};

struct kernel_ucontext {
	uint64_t uc_flags;
	uint64_t uc_link;
	stack_t uc_stack;
	struct kernel_sigcontext uc_mcontext;
	uint64_t uc_sigmask;
};

struct rt_sigframe {
	uint64_t pretcode;
	struct kernel_ucontext uc;
	siginfo_t info;
};

_Static_assert(sizeof(struct kernel_sigcontext) == 256, "sigcontext layout");

#define UC_FP_XSTATE 0x1
#define UC_SIGCONTEXT_SS 0x2
#define UC_STRICT_RESTORE_SS 0x4
#ifndef FP_XSTATE_MAGIC1
#define FP_XSTATE_MAGIC1 0x46505853u
#define FP_XSTATE_MAGIC2 0x46505845u
#endif
#define XCR0_OFFSET 464    /* ptrace's XCR0, a signal frame's struct _fpx_sw_bytes */
#define SW_BYTES_SIZE 48
#define RED_ZONE 128

/* "mov $15,%rax; syscall" and "mov $15,%eax; syscall": __restore_rt. */
static const unsigned char restorer_rax[] = { 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05 };
static const unsigned char restorer_eax[] = { 0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05 };

/* Search [start, end) of the target for a trampoline. */
static uint64_t search_restorer(pid_t pid, uint64_t start, uint64_t end)
{
	const size_t chunk = (size_t)1 << 20, overlap = sizeof(restorer_rax);
	unsigned char *buf = malloc(chunk);
	uint64_t found = 0;

	for (uint64_t at = start; buf && at < end && !found; at += chunk - overlap) {
		size_t len = end - at < chunk ? (size_t)(end - at) : chunk;
		struct iovec local = { buf, len }, remote = { (void *)(uintptr_t)at, len };
		ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
		unsigned char *hit;

		if (n <= 0)
			break;
		if ((hit = memmem(buf, (size_t)n, restorer_rax, sizeof(restorer_rax))) ||
		    (hit = memmem(buf, (size_t)n, restorer_eax, sizeof(restorer_eax))))
			found = at + (uint64_t)(hit - buf);
		if ((size_t)n < len)
			break;
	}
	free(buf);
	return found;
}

/* The trampoline: in the C library first, then any executable mapping. */
static uint64_t find_restorer(pid_t pid)
{
	char path[64], line[512];
	uint64_t found = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	for (int pass = 0; pass < 2 && !found; pass++) {
		f = fopen(path, "re");
		if (!f)
			return 0;
		while (!found && fgets(line, sizeof(line), f)) {
			unsigned long long start, end;
			char perms[8], name[256] = "";

			if (sscanf(line, "%llx-%llx %7s %*s %*s %*s %255s", &start, &end, perms,
				   name) < 3 || perms[0] != 'r' || perms[2] != 'x')
				continue;
			if (pass == 0 && !strstr(name, "libc"))
				continue;
			found = search_restorer(pid, start, end);
		}
		fclose(f);
	}
	return found;
}

/* The registers as the kernel would leave them on resuming an interrupted
 * system call with no signal handler to run. */
static void apply_restart(struct user_regs_struct *g)
{
	if ((long)g->orig_rax < 0)
		return;
	switch ((long)g->rax) {
	case -ERESTARTSYS:
	case -ERESTARTNOINTR:
	case -ERESTARTNOHAND:
		g->rax = g->orig_rax;
		g->rip -= 2;
		break;
	case -ERESTART_RESTARTBLOCK:
		g->rax = SYS_restart_syscall;
		g->rip -= 2;
		break;
	}
	g->orig_rax = (uint64_t)-1;
}

/* Tests only: die (_exit) at injection step N, to show that the target
 * survives our death at each of them (tests/core_dump.c). */
int uffdwp__remote_die_at;

static void maybe_die(int step)
{
	if (uffdwp__remote_die_at == step)
		_exit(0);
}

struct injection {
	struct uffdwp__remote_thread *t;
	uint64_t restorer, frame;
};

/* Write the signal frame and point the thread at the trampoline. */
static int inject_begin(struct injection *in)
{
	struct uffdwp__remote_thread *t = in->t;
	size_t fplen = t->xstate_len;
	uint64_t fpstate = (t->regs.rsp - RED_ZONE - fplen - sizeof(uint32_t)) & ~(uint64_t)63;
	uint64_t frame = (fpstate - sizeof(struct rt_sigframe)) & ~(uint64_t)15;
	unsigned char *fp = malloc(fplen + sizeof(uint32_t));
	struct rt_sigframe f = { 0 };
	struct user_regs_struct g = t->regs, inj;
	uint64_t all = ~(uint64_t)0;
	int ret = 0;

	if (!fp)
		return -ENOMEM;
	apply_restart(&g);
	f.uc.uc_flags = UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS;
	/* An invalid ss_flags makes rt_sigreturn leave the alternate signal
	 * stack as it is (do_sigaltstack fails, and only EFAULT counts). */
	f.uc.uc_stack.ss_flags = 0x7;
	f.uc.uc_mcontext = (struct kernel_sigcontext){
		.r8 = g.r8, .r9 = g.r9, .r10 = g.r10, .r11 = g.r11, .r12 = g.r12,
		.r13 = g.r13, .r14 = g.r14, .r15 = g.r15, .rdi = g.rdi, .rsi = g.rsi,
		.rbp = g.rbp, .rbx = g.rbx, .rdx = g.rdx, .rax = g.rax, .rcx = g.rcx,
		.rsp = g.rsp, .rip = g.rip, .eflags = g.eflags, .cs = (uint16_t)g.cs,
		.ss = (uint16_t)g.ss, .fpstate = fpstate,
	};
	f.uc.uc_sigmask = t->sigmask;
	/* The XSAVE image as ptrace gave it, with the software bytes a signal
	 * frame has there instead of ptrace's XCR0 (struct _fpx_sw_bytes:
	 * magic1, extended size, features, size), and magic2 after it. */
	uint64_t xcr0;
	uint32_t magic1 = FP_XSTATE_MAGIC1, extended = (uint32_t)fplen + sizeof(uint32_t);
	uint32_t size = (uint32_t)fplen, magic2 = FP_XSTATE_MAGIC2;

	memcpy(fp, t->xstate, fplen);
	memcpy(&xcr0, fp + XCR0_OFFSET, sizeof(xcr0));
	memset(fp + XCR0_OFFSET, 0, SW_BYTES_SIZE);
	memcpy(fp + XCR0_OFFSET, &magic1, sizeof(magic1));
	memcpy(fp + XCR0_OFFSET + 4, &extended, sizeof(extended));
	memcpy(fp + XCR0_OFFSET + 8, &xcr0, sizeof(xcr0));
	memcpy(fp + XCR0_OFFSET + 16, &size, sizeof(size));
	memcpy(fp + fplen, &magic2, sizeof(magic2));

	struct iovec local[2] = { { &f, sizeof(f) }, { fp, fplen + sizeof(uint32_t) } };
	struct iovec remote[2] = { { (void *)(uintptr_t)frame, sizeof(f) },
				   { (void *)(uintptr_t)fpstate, fplen + sizeof(uint32_t) } };
	ssize_t n = process_vm_writev(t->tid, local, 2, remote, 2, 0);

	free(fp);
	if (n != (ssize_t)(sizeof(f) + fplen + sizeof(uint32_t)))
		return n < 0 && errno == ESRCH ? -ESRCH : -EFAULT;
	in->frame = frame;
	/* Registers first: from here a death of ours ends in rt_sigreturn,
	 * which also restores the mask blocked next. */
	inj = t->regs;
	inj.rip = in->restorer;
	inj.rsp = frame + sizeof(f.pretcode);  /* as after the handler's ret */
	inj.orig_rax = (uint64_t)-1;
	if (ptrace(PTRACE_SETREGS, t->tid, 0, &inj) < 0)
		return -ESRCH;
	maybe_die(1);
	if (ptrace(PTRACE_SETSIGMASK, t->tid, sizeof(all), &all) < 0)
		ret = -ESRCH;
	maybe_die(2);
	return ret;
}

/* Run system call nr(a0, a1) in the thread; returns its result (a
 * negative errno), or -ESRCH when the thread died. */
static long inject_call(struct injection *in, long nr, uint64_t a0, uint64_t a1)
{
	struct uffdwp__remote_thread *t = in->t;
	struct user_regs_struct g;
	int status;

	if (ptrace(PTRACE_SYSCALL, t->tid, 0, 0) < 0)
		return -ESRCH;
	status = wait_stop(t, PTRACE_SYSCALL);
	if (status < 0 || ptrace(PTRACE_GETREGS, t->tid, 0, &g) < 0)
		return -ESRCH;
	if (WSTOPSIG(status) != (SIGTRAP | 0x80))
		return -EPROTO;  /* a job-control stop: inject_end() copes */
	if (g.orig_rax != SYS_rt_sigreturn)
		nr = -1;  /* not where we put it: run nothing, and fail */
	/* rt_sigreturn becomes our call, returning to the trampoline. */
	g.orig_rax = (uint64_t)nr;
	g.rdi = a0;
	g.rsi = a1;
	g.rip = in->restorer;
	g.rsp = in->frame + sizeof(uint64_t);
	if (ptrace(PTRACE_SETREGS, t->tid, 0, &g) < 0)
		return -ESRCH;
	maybe_die(nr == SYS_userfaultfd ? 3 : 5);
	if (ptrace(PTRACE_SYSCALL, t->tid, 0, 0) < 0)
		return -ESRCH;
	status = wait_stop(t, PTRACE_SYSCALL);
	if (status < 0 || ptrace(PTRACE_GETREGS, t->tid, 0, &g) < 0)
		return -ESRCH;
	if (WSTOPSIG(status) != (SIGTRAP | 0x80) || nr < 0)
		return -EPROTO;
	maybe_die(nr == SYS_userfaultfd ? 4 : 6);
	return (long)g.rax;
}

/* Put the thread back as it was, stopped where it stopped. The interrupt
 * comes first: should we die before the end, the pending trap makes the
 * kernel run its restart logic on the way out (see the top). */
static int inject_end(struct injection *in)
{
	struct uffdwp__remote_thread *t = in->t;
	int status;

	if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) < 0 ||
	    ptrace(PTRACE_SETSIGMASK, t->tid, sizeof(t->sigmask), &t->sigmask) < 0)
		return -ESRCH;
	maybe_die(7);
	if (ptrace(PTRACE_SETREGS, t->tid, 0, &t->regs) < 0)
		return -ESRCH;
	maybe_die(8);
	if (ptrace(PTRACE_CONT, t->tid, 0, 0) < 0)
		return -ESRCH;
	for (;;) {
		status = wait_stop(t, PTRACE_CONT);
		if (status < 0)
			return -ESRCH;
		if ((status >> 16) == PTRACE_EVENT_STOP)
			return 0;
		if (ptrace(PTRACE_CONT, t->tid, 0, 0) < 0)
			return -ESRCH;
	}
}

/*
 * Seize (without stopping) the thread that will make the calls: a running
 * one (most likely outside any system call, see the top) if there is one,
 * else the first not stopped by job control (-EBUSY if none). A seize
 * refused (-EPERM) is the first thing we try: nothing else was done.
 */
static int seize_one(struct uffdwp_remote *r)
{
	char path[64], state, best_state = 0;
	pid_t best = 0;
	struct dirent *d;
	DIR *dir;
	int ret;

	snprintf(path, sizeof(path), "/proc/%d/task", r->pid);
	dir = opendir(path);
	if (!dir)
		return errno == ENOENT ? -ESRCH : -errno;
	while ((d = readdir(dir))) {
		pid_t tid = (pid_t)atoi(d->d_name);

		if (tid <= 0)
			continue;
		state = thread_state(r->pid, tid);
		if (state == 'T' || state == 't' || !state)
			continue;
		if (!best || (state == 'R' && best_state != 'R')) {
			best = tid;
			best_state = state;
		}
	}
	closedir(dir);
	if (!best)
		return access(path, F_OK) ? -ESRCH : -EBUSY;
	if (ptrace(PTRACE_SEIZE, best, 0, PTRACE_O_TRACESYSGOOD) < 0)
		return -errno;
	ret = add_thread(r, best);
	if (ret)
		ptrace(PTRACE_DETACH, best, 0, 0);
	return ret;
}

/* Stop the thread seize_one() chose and read its state. */
static int stop_seized(struct uffdwp_remote *r)
{
	r->stopped = true;
	r->stop_ns = uffdwp__now_ns();
	if (ptrace(PTRACE_INTERRUPT, r->threads[0].tid, 0, 0) < 0 ||
	    wait_stop(&r->threads[0], PTRACE_CONT) < 0)
		return -ESRCH;
	return capture(&r->threads[0]);
}

int uffdwp_remote_open(pid_t pid, struct uffdwp **ctx, const struct uffdwp_opts *opts)
{
	struct uffdwp_opts o;
	struct injection in = { 0 };
	struct uffdwp_remote *r;
	long target_fd;
	int fd = -1, ret;

	if (!ctx || pid <= 0 || pid == getpid())
		return -EINVAL;
	ret = uffdwp__take_opts(&o, opts);
	if (ret)
		return ret;
	if (o.backend == UFFDWP_BACKEND_EMULATED || (o.features & UFFDWP_FEATURE_SIGBUS))
		return -EOPNOTSUPP;
	if (o.backend != UFFDWP_BACKEND_AUTO && o.backend != UFFDWP_BACKEND_KERNEL)
		return -EINVAL;
	ret = new_remote(&r, pid);
	if (ret)
		return ret;
	ret = seize_one(r);
	/* Text does not change: searched before anything stops. */
	if (ret == 0) {
		in.restorer = find_restorer(pid);
		/* Stopped even without a trampoline: a seized thread is let go
		 * by a detach, which needs it stopped. */
		ret = stop_seized(r);
		if (ret == 0 && !in.restorer)
			ret = -ENOEXEC;
	}
	if (ret == 0) {
		in.t = &r->threads[0];
		ret = inject_begin(&in);
	}
	if (ret == 0) {
		target_fd = inject_call(&in, SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK, 0);
		if (target_fd >= 0) {
			fd = (int)syscall(SYS_pidfd_getfd, r->pidfd, (int)target_fd, 0);
			if (fd < 0)
				ret = -errno;
			/* The target must hold no reference: with one, our death
			 * would leave its memory protected. */
			long closed = inject_call(&in, SYS_close, (uint64_t)target_fd, 0);

			if (closed < 0 && !ret)
				ret = (int)closed;
		} else {
			/* Its refusal, told apart from ours to trace it. */
			ret = target_fd == -EPERM ? -EACCES : (int)target_fd;
		}
		if (inject_end(&in) < 0 && !ret)
			ret = -ESRCH;
	}
	uffdwp_remote_free(r);  /* the thread runs on */
	if (ret) {
		if (fd >= 0)
			close(fd);
		return ret;
	}
	return uffdwp__open_fd(ctx, fd, pid, o.features);
}

#else /* not x86_64 */

int uffdwp_remote_attach(struct uffdwp_remote **out, pid_t pid)
{
	return out && pid > 0 && pid != getpid() ? -EOPNOTSUPP : -EINVAL;
}

int uffdwp_remote_open(pid_t pid, struct uffdwp **ctx, const struct uffdwp_opts *opts)
{
	return ctx && pid > 0 && pid != getpid() ? -EOPNOTSUPP : -EINVAL;
}

int uffdwp_remote_resume(struct uffdwp_remote *r)
{
	return 0;
}

void uffdwp_remote_free(struct uffdwp_remote *r)
{
}

#endif
