// signals: counts SIGALRM ticks of an interval timer (handled on an
// alternate signal stack) and answers SIGUSR1 sent to itself; prints one
// line per tick. A restored copy that lost its timer, its handlers or its
// alternate stack hangs or prints other lines.
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks, usr1;
static char altstack[65536];

static void on_alarm(int sig) {
	int here;
	// Prove the handler runs on the alternate stack.
	if ((char *)&here < altstack || (char *)&here >= altstack + sizeof altstack) _exit(3);
	ticks++;
}
static void on_usr1(int sig) { usr1++; }

int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 50;
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	sigaltstack(&ss, NULL);
	struct sigaction sa = {0};
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_ONSTACK | SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	struct itimerval it = {{0, 20000}, {0, 20000}};
	setitimer(ITIMER_REAL, &it, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int seen = 0;
	while (seen < n) {
		pause();
		while (seen < ticks && seen < n) {
			seen++;
			if (seen % 5 == 0) raise(SIGUSR1);
			printf("tick %d usr1 %d\n", seen, (int)usr1);
		}
	}
	return 0;
}
