/* The dev kit's cgroup v2 view for a Slurm node daemon (LD_PRELOAD into slurmd and slurmstepd of
 * 24.11 and later; never used in production).
 *
 * A dev node runs in its own mount and cgroup namespace where the controller-less cgroup2
 * hierarchy is mounted at /sys/fs/cgroup. Its processes still belong to the host's cgroup v1
 * hierarchies, and the kernel lists those in /proc/<pid>/cgroup, so Slurm's cgroup/v2 plugin
 * fatals "Hybrid mode is not supported". Slurm also reads /proc/1/cgroup and /proc/1/mountinfo to
 * find the cgroup of "init", which here is the host's init outside the node's namespaces.
 *
 * So reads of /proc/<pid>/cgroup keep only the unified line ("0::<path>"), and /proc/1/cgroup and
 * /proc/1/mountinfo read those of the calling process (the node's root cgroup, its mounts).
 * Every other open passes through untouched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef FILE *(*fopen_fn)(const char *, const char *);

enum view { PASS, CGROUP, MOUNTINFO };

/* Which view a path needs; CGROUP and MOUNTINFO write the file to read into real. */
static enum view classify(const char *path, char *real, size_t size)
{
	const char *pid, *slash;

	if (!path || strncmp(path, "/proc/", 6))
		return PASS;
	pid = path + 6;
	slash = strchr(pid, '/');
	if (!slash || slash == pid)
		return PASS;
	if (!strcmp(slash, "/cgroup")) {
		if (slash - pid == 1 && pid[0] == '1')
			snprintf(real, size, "/proc/self/cgroup");
		else
			snprintf(real, size, "%s", path);
		return CGROUP;
	}
	if (!strcmp(slash, "/mountinfo") && slash - pid == 1 && pid[0] == '1') {
		snprintf(real, size, "/proc/self/mountinfo");
		return MOUNTINFO;
	}
	return PASS;
}

/* A memory file holding the unified line of a cgroup file; -1 (errno set) when it cannot be read. */
static int unified_only(const char *real)
{
	static open_fn real_open;
	char buf[65536], *line, *next;
	ssize_t got, len = 0;
	int in, out;

	if (!real_open)
		real_open = (open_fn)dlsym(RTLD_NEXT, "open");
	in = real_open(real, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -1;
	while (len < (ssize_t)sizeof(buf) - 1 && (got = read(in, buf + len, sizeof(buf) - 1 - len)) > 0)
		len += got;
	close(in);
	buf[len] = '\0';
	out = memfd_create("cgroup", 0);
	if (out < 0)
		return -1;
	for (line = buf; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			next++;
		if (!strncmp(line, "0::", 3) && write(out, line, next ? (size_t)(next - line) : strlen(line)) < 0) {
			close(out);
			return -1;
		}
	}
	lseek(out, 0, SEEK_SET);
	return out;
}

static int view_fd(enum view view, const char *real, int flags, int *handled)
{
	static open_fn real_open;

	*handled = view != PASS;
	if (view == CGROUP)
		return unified_only(real);
	if (view == MOUNTINFO) {
		if (!real_open)
			real_open = (open_fn)dlsym(RTLD_NEXT, "open");
		return real_open(real, flags);
	}
	return -1;
}

int openat(int dirfd, const char *path, int flags, ...)
{
	static openat_fn real_openat;
	char real[64];
	mode_t mode = 0;
	int handled, fd;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	fd = view_fd(classify(path, real, sizeof(real)), real, flags, &handled);
	if (handled)
		return fd;
	if (!real_openat)
		real_openat = (openat_fn)dlsym(RTLD_NEXT, "openat");
	return real_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

int open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return openat(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...) __attribute__((alias("open")));

FILE *fopen(const char *path, const char *mode)
{
	static fopen_fn real_fopen;
	char real[64];
	int handled, fd;

	fd = view_fd(classify(path, real, sizeof(real)), real, O_RDONLY, &handled);
	if (handled)
		return fd < 0 ? NULL : fdopen(fd, "r");
	if (!real_fopen)
		real_fopen = (fopen_fn)dlsym(RTLD_NEXT, "fopen");
	return real_fopen(path, mode);
}

FILE *fopen64(const char *path, const char *mode) __attribute__((alias("fopen")));
