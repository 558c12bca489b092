/* SPDX-License-Identifier: MIT */
/*
 * Handing a fault signal that is not ours to the action installed before
 * our handler: the emulated backend's SIGSEGV and the engine's SIGBUS.
 */
#include <pthread.h>
#include "backend.h"

/*
 * As the kernel would have delivered it: SA_RESETHAND spends the handler
 * once; it runs with the interrupted mask plus its own sa_mask (not our
 * handler's: a handler that longjmps out would keep that). One difference,
 * on purpose: the signal itself stays unblocked even without SA_NODEFER,
 * so that a write-protect fault inside the previous handler still reaches
 * ours (and blocks, or is resolved, like any writer's). Async-signal-safe.
 */
void uffdwp__chain_signal(struct uffdwp__chained *c, int sig, siginfo_t *si, ucontext_t *uc)
{
	const struct sigaction *prev = &c->previous;
	bool from_fault = si->si_code > 0;
	bool spent = (prev->sa_flags & SA_RESETHAND) && atomic_exchange(&c->spent, true);
	void (*handler)(int) = spent ? SIG_DFL : prev->sa_handler;
	sigset_t mask;

	if (handler == SIG_IGN && !from_fault)
		return;
	if (handler == SIG_DFL || handler == SIG_IGN) {
		/* The default action, as if we had never been installed: a
		 * fault re-executes and dies of the signal, with a core (the
		 * kernel forces the default on a fault even when the signal
		 * is ignored); a sent signal is sent again. */
		struct sigaction dfl = { .sa_handler = SIG_DFL };

		sigaction(sig, &dfl, NULL);
		if (!from_fault)
			raise(sig);
		return;
	}
	sigorset(&mask, &uc->uc_sigmask, &prev->sa_mask);
	sigdelset(&mask, sig);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
	if (prev->sa_flags & SA_SIGINFO)
		prev->sa_sigaction(sig, si, uc);
	else
		handler(sig);
}
