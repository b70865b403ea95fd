// threads: a main thread and three workers, each with thread-local state
// and a stack of its own, meeting at a barrier every round (futexes); a
// fourth thread sleeps in nanosleep the whole time, and a fifth waits on a
// condition variable that main signals at the end. Main prints one line
// per round with every worker's running sums, so a restored copy that lost
// a thread, its registers, its TLS or a futex prints other lines or hangs.
// Every thread has a name of its own (pthread_setname_np).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define WORKERS 3
static int rounds;
static pthread_barrier_t start, done;
static unsigned long results[WORKERS];
static __thread unsigned long tls_sum;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int finished;

static void *worker(void *arg) {
	long id = (long)arg;
	unsigned long local[512];
	for (int i = 0; i < 512; i++) local[i] = id * 1000 + i;
	for (int r = 0; r < rounds; r++) {
		pthread_barrier_wait(&start);
		for (int i = 0; i < 512; i++) {
			local[i] = local[i] * 31 + r;
			tls_sum += local[i] & 0xffff;
		}
		results[id] = tls_sum;
		pthread_barrier_wait(&done);
	}
	return (void *)tls_sum;
}

static void *sleeper(void *arg) {
	struct timespec ts = {3600, 0};
	nanosleep(&ts, NULL); // cancelled at the end
	return NULL;
}

static void *waiter(void *arg) {
	pthread_mutex_lock(&mu);
	while (!finished) pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	return (void *)7;
}

int main(int argc, char **argv) {
	rounds = argc > 1 ? atoi(argv[1]) : 50;
	setvbuf(stdout, NULL, _IOLBF, 0);
	pthread_barrier_init(&start, NULL, WORKERS + 1);
	pthread_barrier_init(&done, NULL, WORKERS + 1);
	pthread_t w[WORKERS], s, c;
	for (long i = 0; i < WORKERS; i++) {
		char name[16];
		pthread_create(&w[i], NULL, worker, (void *)i);
		snprintf(name, sizeof name, "worker-%ld", i);
		pthread_setname_np(w[i], name);
	}
	pthread_create(&s, NULL, sleeper, NULL);
	pthread_setname_np(s, "sleeper");
	pthread_create(&c, NULL, waiter, NULL);
	pthread_setname_np(c, "waiter");
	pthread_setname_np(pthread_self(), "threads-main");
	for (int r = 0; r < rounds; r++) {
		pthread_barrier_wait(&start);
		pthread_barrier_wait(&done);
		printf("%d %lu %lu %lu\n", r, results[0], results[1], results[2]);
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	unsigned long total = 0;
	for (int i = 0; i < WORKERS; i++) {
		void *ret;
		pthread_join(w[i], &ret);
		total += (unsigned long)ret;
	}
	pthread_mutex_lock(&mu);
	finished = 1;
	pthread_cond_signal(&cv);
	pthread_mutex_unlock(&mu);
	void *ret;
	pthread_join(c, &ret);
	pthread_cancel(s);
	pthread_join(s, NULL);
	printf("total %lu waiter %ld\n", total, (long)ret);
	return 0;
}
