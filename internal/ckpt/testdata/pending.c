// pending: signals waiting while blocked (one for the thread, one for the
// process, real-time ones queued with values) and POSIX timers (one that
// signals the process, one a thread, one that only counts down) must all
// be there after a move: the program unblocks the signals at the end and
// prints what each handler got, in delivery order, and checks its timers.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

static volatile sig_atomic_t ticks_a, ticks_b;
static struct { int signo, code, value; } got[16];
static volatile int ngot;

static void record(int sig, siginfo_t *si, void *ctx) {
	if (ngot < 16) {
		got[ngot].signo = sig;
		got[ngot].code = si->si_code;
		got[ngot].value = si->si_value.sival_int;
		ngot++;
	}
}
static void tick_a(int sig) { ticks_a++; }
static void tick_b(int sig) { ticks_b++; }

static timer_t make(int notify, int sig, int value, long interval_ms, long first_ms) {
	struct sigevent ev = {0};
	ev.sigev_notify = notify;
	ev.sigev_signo = sig;
	ev.sigev_value.sival_int = value;
	if (notify == SIGEV_THREAD_ID) ev._sigev_un._tid = syscall(SYS_gettid);
	timer_t t;
	if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) { perror("timer_create"); exit(1); }
	struct itimerspec its = {{interval_ms / 1000, interval_ms % 1000 * 1000000}, {first_ms / 1000, first_ms % 1000 * 1000000}};
	if (timer_settime(t, 0, &its, NULL) != 0) { perror("timer_settime"); exit(1); }
	return t;
}

int main(int argc, char **argv) {
	int rounds = argc > 1 ? atoi(argv[1]) : 30;
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {0};
	sa.sa_sigaction = record;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	int waiting[] = {SIGUSR1, SIGUSR2, SIGRTMIN, SIGRTMIN + 1};
	sigset_t block;
	sigemptyset(&block);
	for (int i = 0; i < 4; i++) {
		sigaction(waiting[i], &sa, NULL);
		sigaddset(&block, waiting[i]);
	}
	signal(SIGRTMIN + 2, tick_a);
	signal(SIGRTMIN + 3, tick_b);
	sigprocmask(SIG_BLOCK, &block, NULL);
	raise(SIGUSR1);          // for this thread
	kill(getpid(), SIGUSR2); // for the process
	union sigval v;
	v.sival_int = 11; sigqueue(getpid(), SIGRTMIN, v);
	v.sival_int = 22; sigqueue(getpid(), SIGRTMIN, v);
	v.sival_int = 33; sigqueue(getpid(), SIGRTMIN + 1, v);
	timer_t a = make(SIGEV_SIGNAL, SIGRTMIN + 2, 0, 10, 10);
	timer_t b = make(SIGEV_THREAD_ID, SIGRTMIN + 3, 0, 10, 10);
	timer_t c = make(SIGEV_NONE, 0, 0, 5000, 1000000);
	for (int r = 0; r < rounds; r++) {
		struct timespec ts = {0, 20 * 1000 * 1000};
		if (r == rounds - 10) ticks_a = ticks_b = 0; // count the last 200 ms: after any move
		while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) != 0) {}
		printf("round %d\n", r);
	}
	int a0 = ticks_a, b0 = ticks_b;
	printf("timer A ticked %s, timer B ticked %s\n", a0 >= 5 ? "enough" : "too little",
	       b0 >= 5 ? "enough" : "too little");
	struct itimerspec left;
	timer_gettime(c, &left);
	printf("timer C: interval %lds, %s\n", (long)left.it_interval.tv_sec,
	       left.it_value.tv_sec > 990 && left.it_value.tv_sec <= 1000 ? "counting down" : "wrong");
	printf("deleted: %d %d %d\n", timer_delete(a), timer_delete(b), timer_delete(c));
	sigprocmask(SIG_UNBLOCK, &block, NULL);
	for (int i = 0; i < ngot; i++)
		printf("got signal %d code %d value %d\n", got[i].signo, got[i].code, got[i].value);
	return 0;
}
