/* The SPANK plugin's device code (slice.c, cgroup2.c) without Slurm, for tests:
 *   fence_harness SLICE_DIR JOB_ID DEVICE...  apply the job's slice file to this process's cgroups,
 *                                             as task_post_fork does (v1 and v2)
 *   fence_harness - - DEVICE...               only try the devices
 * then open each DEVICE read-write and print "<path> <errno>" (0: it opened). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static void say(const char *level, const char *format, va_list args)
{
	fprintf(stderr, "%s: ", level);
	vfprintf(stderr, format, args);
	fputc('\n', stderr);
}

#define LOGGER(name, level)                    \
	void name(const char *format, ...)     \
	{                                      \
		va_list args;                  \
		va_start(args, format);        \
		say(level, format, args);      \
		va_end(args);                  \
	}

LOGGER(slurm_error, "error")
LOGGER(slurm_info, "info")
LOGGER(slurm_debug, "debug")

int main(int argc, char **argv)
{
	struct slice slice;

	if (argc < 3) {
		fprintf(stderr, "usage: %s SLICE_DIR|- JOB_ID|- DEVICE...\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "-") != 0) {
		if (slice_read(argv[1], (unsigned int)strtoul(argv[2], NULL, 10), &slice) < 0 || !slice.found)
			return 3;
		if (slice_apply_devices(&slice, "/sys/fs/cgroup/devices", getpid()) < 0 || cgroup2_fence(&slice, getpid()) < 0)
			return 4;
	}
	for (int i = 3; i < argc; i++) {
		int fd = open(argv[i], O_RDWR | O_CLOEXEC);

		printf("%s %d\n", argv[i], fd < 0 ? errno : 0);
		if (fd >= 0)
			close(fd);
	}
	return 0;
}
