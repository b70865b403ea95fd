// notifier: an inotify descriptor that holds events not yet read half of
// the time: each round it changes the watched file ("pending"), waits
// 100 ms, reads the event ("read"), waits 100 ms.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

static void pause_ms(long ms) {
	struct timespec ts = {0, ms * 1000 * 1000};
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
	if (argc < 3) return 2;
	int n = atoi(argv[1]);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int f = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int in = inotify_init1(IN_CLOEXEC);
	if (f < 0 || in < 0 || inotify_add_watch(in, argv[2], IN_MODIFY) < 0) return 1;
	char ev[4096];
	for (int i = 0; i < n; i++) {
		write(f, "x", 1);
		printf("pending %d\n", i);
		pause_ms(100);
		printf("read %d: %ld\n", i, (long)read(in, ev, sizeof ev));
		pause_ms(100);
	}
	return 0;
}
