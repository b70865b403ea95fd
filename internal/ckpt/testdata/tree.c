// tree: a process with a child and a grandchild, each printing lines with
// a checksum of its own memory (the child's differs from its parent's
// after the fork), the parent waiting for its child by its id, which
// waits for its own. The child leads a process group of its own, which the
// grandchild is in. With "ids" it prints the ids each sees, which a move
// within PID namespaces keeps; without, whether the groups are still so.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void work(const char *who, int n, unsigned char *heap, size_t size, int ids) {
	unsigned long sum = 0;
	for (int i = 0; i < n; i++) {
		for (size_t j = i % 4096; j < size; j += 4096) {
			heap[j] += (unsigned char)(who[0]);
			sum += heap[j];
		}
		struct timespec ts = {0, 15 * 1000 * 1000};
		nanosleep(&ts, NULL);
		if (ids)
			printf("%s %d %lu pid %d ppid %d pgid %d\n", who, i, sum, (int)getpid(), (int)getppid(), (int)getpgid(0));
		else
			printf("%s %d %lu%s\n", who, i, sum,
			       who[0] == 'c' && getpgid(0) == getpid()    ? " leads its group"
			       : who[0] == 'g' && getpgid(0) == getppid() ? " in its parent's group"
			                                                  : "");
	}
}

static int ids;

// waitfor waits for the child by its id where ids are kept (a move within
// PID namespaces), for any child where they are not.
static int waitfor(const char *who, pid_t child) {
	int status;
	if (waitpid(ids ? child : -1, &status, 0) <= 0) {
		printf("%s: waitpid: lost its child\n", who);
		return 1;
	}
	printf("%s: child exited %d\n", who, WEXITSTATUS(status));
	return 0;
}

int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 40;
	ids = argc > 2 && strcmp(argv[2], "ids") == 0;
	size_t size = 1 << 20;
	unsigned char *heap = malloc(size);
	for (size_t i = 0; i < size; i++) heap[i] = (unsigned char)(i * 7 + 3);
	setvbuf(stdout, NULL, _IOLBF, 0);
	pid_t child = fork();
	if (child < 0) return 2;
	if (child == 0) {
		if (setpgid(0, 0) < 0) return 3;
		pid_t grandchild = fork();
		if (grandchild < 0) return 2;
		if (grandchild == 0) {
			work("grandchild", n, heap, size, ids);
			return 5;
		}
		work("child", n / 2, heap, size, ids);
		return waitfor("child", grandchild) ? 1 : 7;
	}
	work("parent", n / 4, heap, size, ids);
	return waitfor("parent", child);
}
