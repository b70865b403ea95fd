#define _GNU_SOURCE
// ids: what a process sees of its own identity must not change when it
// moves. Threads A and C are created around a B that has ended (so their
// ids have a gap); every round each thread compares getpid, gettid and
// the id glibc keeps for it with the ones it first saw, and main prints
// them with getppid and the id /proc/self names.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

static int rounds;
static pthread_barrier_t start, done;
static pid_t first_pid;
static volatile int bad;

static void check(pid_t tid) {
	if (getpid() != first_pid || syscall(SYS_gettid) != tid || gettid() != tid) bad = 1;
}

static void *thread(void *arg) {
	pid_t tid = syscall(SYS_gettid);
	*(pid_t *)arg = tid;
	for (int r = 0; r < rounds; r++) {
		pthread_barrier_wait(&start);
		check(tid);
		pthread_barrier_wait(&done);
	}
	return NULL;
}

static void *brief(void *arg) { return NULL; }

static int proc_self(void) {
	char buf[64] = {0};
	if (readlink("/proc/self", buf, sizeof buf - 1) < 0) return -1;
	return atoi(buf);
}

int main(int argc, char **argv) {
	rounds = argc > 1 ? atoi(argv[1]) : 50;
	setvbuf(stdout, NULL, _IOLBF, 0);
	first_pid = getpid();
	pid_t self = syscall(SYS_gettid), ta = 0, tb = 0, tc = 0;
	pthread_barrier_init(&start, NULL, 3);
	pthread_barrier_init(&done, NULL, 3);
	pthread_t a, b, c;
	pthread_create(&a, NULL, thread, &ta);
	pthread_create(&b, NULL, brief, &tb);
	pthread_join(b, NULL);
	pthread_create(&c, NULL, thread, &tc);
	for (int r = 0; r < rounds; r++) {
		pthread_barrier_wait(&start);
		check(self);
		pthread_barrier_wait(&done);
		printf("round %d pid %d tids %d %d %d ppid %d /proc/self %d %s\n", r, getpid(), self, ta, tc,
		       getppid(), proc_self(), bad ? "CHANGED" : "same");
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	pthread_join(a, NULL);
	pthread_join(c, NULL);
	return bad;
}
