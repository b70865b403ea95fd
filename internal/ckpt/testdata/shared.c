// shared: a parent and its child take turns through memory they share
// (MAP_SHARED|MAP_ANONYMOUS, inherited by fork), each printing its turns;
// at the end the child prints a note the parent wrote into a POSIX shared
// memory object with write(2) before the fork, which neither has touched
// through its mapping since. Made apart by a move, the turns stop (each
// gives up after two seconds) and the note reads as zeros.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pause_ms(int ms) {
	struct timespec ts = {0, ms * 1000000L};
	nanosleep(&ts, NULL);
}

static int wait_turn(volatile int *turn, int want) {
	for (int i = 0; i < 2000; i++) {
		if (*turn == want)
			return 0;
		pause_ms(1);
	}
	return -1;
}

int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 40;
	setvbuf(stdout, NULL, _IOLBF, 0);
	volatile int *turn = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	char name[64];
	snprintf(name, sizeof name, "/mosaic-shared-%d-%ld", (int)getpid(), (long)time(NULL));
	int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (turn == MAP_FAILED || fd < 0) {
		perror("shared memory");
		return 2;
	}
	static const char msg[] = "written before the fork";
	if (write(fd, msg, sizeof msg) != sizeof msg)
		return 2;
	const char *note = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	shm_unlink(name);
	close(fd);
	if (note == MAP_FAILED)
		return 2;
	pid_t child = fork();
	if (child < 0)
		return 2;
	if (child == 0) {
		for (int i = 0; i < n; i++) {
			if (wait_turn(turn, 1)) {
				printf("child: stuck at %d\n", i);
				return 1;
			}
			printf("child %d\n", i);
			*turn = 0;
		}
		printf("child: %s\n", note[0] ? note : "(zeros)");
		return 0;
	}
	for (int i = 0; i < n; i++) {
		if (wait_turn(turn, 0)) {
			printf("parent: stuck at %d\n", i);
			break;
		}
		printf("parent %d\n", i);
		pause_ms(10);
		*turn = 1;
	}
	int status;
	waitpid(child, &status, 0);
	printf("parent: child exited %d\n", WEXITSTATUS(status));
	return 0;
}
