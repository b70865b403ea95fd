// avx: keeps values in all sixteen AVX registers across blocking system
// calls (nanosleep, issued from assembly so that nothing spills them) and
// checks them after each: a restore that lost the extended FPU state
// prints "bad".
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
	int n = argc > 1 ? atoi(argv[1]) : 50;
	setvbuf(stdout, NULL, _IOLBF, 0);
	double in[4] __attribute__((aligned(32)));
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < 4; k++) in[k] = i * 1.5 + k;
		struct timespec ts = {0, 20 * 1000 * 1000};
		long bad;
		__asm__ volatile(
			"vbroadcastsd 0(%[in]), %%ymm0\n"
			"vbroadcastsd 8(%[in]), %%ymm7\n"
			"vbroadcastsd 16(%[in]), %%ymm12\n"
			"vbroadcastsd 24(%[in]), %%ymm15\n"
			"mov $230, %%eax\n" // clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL)
			"mov $1, %%edi\n"
			"xor %%esi, %%esi\n"
			"mov %[ts], %%rdx\n"
			"xor %%r10d, %%r10d\n"
			"syscall\n"
			"vbroadcastsd 0(%[in]), %%ymm1\n"
			"vbroadcastsd 8(%[in]), %%ymm8\n"
			"vbroadcastsd 16(%[in]), %%ymm13\n"
			"vbroadcastsd 24(%[in]), %%ymm14\n"
			"vcmpneqpd %%ymm1, %%ymm0, %%ymm2\n"
			"vcmpneqpd %%ymm8, %%ymm7, %%ymm3\n"
			"vcmpneqpd %%ymm13, %%ymm12, %%ymm4\n"
			"vcmpneqpd %%ymm14, %%ymm15, %%ymm5\n"
			"vorpd %%ymm2, %%ymm3, %%ymm2\n"
			"vorpd %%ymm4, %%ymm5, %%ymm4\n"
			"vorpd %%ymm2, %%ymm4, %%ymm2\n"
			"vptest %%ymm2, %%ymm2\n"
			"setnz %%al\n"
			"movzbq %%al, %[bad]\n"
			: [bad] "=r"(bad)
			: [in] "r"(in), [ts] "r"(&ts)
			: "rax", "rcx", "rdx", "rsi", "rdi", "r10", "r11", "memory",
			  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm7", "xmm8",
			  "xmm12", "xmm13", "xmm14", "xmm15");
		printf("%d %s\n", i, bad ? "bad" : "ok");
	}
	return 0;
}
