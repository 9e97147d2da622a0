/* Test helper for hibfile's capture tests: a process with a known memory
 * region, known open files and known signal dispositions, which dirties a
 * requested set of pages on command.
 *
 * usage: helper PAGES DATAFILE
 * prints "REGION_ADDRESS REGION_BYTES\n" when ready; then for each line
 * "dirty K STRIDE" on stdin increments a byte in K pages (every STRIDE-th) of
 * the region and answers "ok\n".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void on_usr1(int sig) { (void)sig; }

int main(int argc, char **argv) {
	if (argc != 3) {
		return 2;
	}
	long pages = atol(argv[1]);
	long pg = sysconf(_SC_PAGESIZE);
	/* Guard pages around the region keep it one mapping of its own. */
	unsigned char *area = mmap(NULL, (pages + 2) * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		return 1;
	}
	unsigned char *region = area + pg;
	if (mprotect(region, pages * pg, PROT_READ | PROT_WRITE) != 0) {
		return 1;
	}
	for (long i = 0; i < pages; i++) {
		memset(region + i * pg, (int)(i % 251) + 1, pg);
	}
	int data = open(argv[2], O_RDWR | O_APPEND); /* fd 3 */
	if (data != 3 || write(data, "hello", 5) != 5) {
		return 1;
	}
	if (open("/dev/null", O_WRONLY | O_CLOEXEC) != 4) {
		return 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGUSR2, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);

	char line[64];
	int n = snprintf(line, sizeof line, "%lx %ld\n", (unsigned long)region, pages * pg);
	if (write(1, line, n) != n) {
		return 1;
	}
	for (;;) {
		ssize_t got = read(0, line, sizeof line - 1);
		if (got <= 0) {
			return 0;
		}
		line[got] = 0;
		long k, stride;
		if (sscanf(line, "dirty %ld %ld", &k, &stride) == 2) {
			for (long i = 0; i < k; i++) {
				region[i * stride * pg + 7] += 1; /* a new value each time: repeated commands keep changing it */
			}
		}
		if (write(1, "ok\n", 3) != 3) {
			return 1;
		}
	}
}
