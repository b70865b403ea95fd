// vforker: says "ready", then vforks a child that waits a while before it
// exits, without executing anything: its parent waits in the kernel all
// that time, the two sharing one address space.
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(void) {
	setvbuf(stdout, NULL, _IONBF, 0);
	printf("ready\n");
	if (vfork() == 0) {
		struct timespec ts = {30, 0};
		nanosleep(&ts, NULL);
		_exit(0);
	}
	return 0;
}
