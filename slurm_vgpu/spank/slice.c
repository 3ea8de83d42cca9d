/* The slice file: KEY=VALUE lines written by the prolog (slurm_vgpu/node). Trusted only when it is
 * a regular file owned by root and writable by nobody else; every key must be on the allowlist. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static const char *const allowed_vars[] = { SLICE_VARS };

static int var_allowed(const char *name)
{
	for (size_t i = 0; i < sizeof(allowed_vars) / sizeof(allowed_vars[0]); i++)
		if (strcmp(name, allowed_vars[i]) == 0)
			return 1;
	return 0;
}

/* "c 195:3 rw": type, major:minor, access; the only form the prolog writes. */
int device_rule_parse(const char *rule, struct device_rule *parsed)
{
	int end = 0;

	if (sscanf(rule, "%c %u:%u %3[rwm]%n", &parsed->type, &parsed->major, &parsed->minor, parsed->access,
		   &end) != 4)
		return -1;
	return (parsed->type == 'c' || parsed->type == 'b') && rule[end] == '\0' ? 0 : -1;
}

static int add_rule(char rules[][32], size_t *count, const char *value, const char *path)
{
	struct device_rule parsed;

	if (device_rule_parse(value, &parsed) < 0 || strlen(value) >= 32 || *count >= MAX_DEVICE_RULES) {
		log_error("%s: malformed device rule '%s'", path, value);
		return -1;
	}
	strcpy(rules[(*count)++], value);
	return 0;
}

static int parse_line(struct slice *slice, char *line, const char *path)
{
	char *value = strchr(line, '=');

	line[strcspn(line, "\n")] = '\0';
	if (line[0] == '\0' || line[0] == '#')
		return 0;
	if (value == NULL) {
		log_error("%s: expected KEY=VALUE, got '%s'", path, line);
		return -1;
	}
	*value++ = '\0';
	if (strcmp(line, SLICE_DEVICE_ALLOW) == 0)
		return add_rule(slice->allow, &slice->nallow, value, path);
	if (strcmp(line, SLICE_DEVICE_DENY) == 0)
		return add_rule(slice->deny, &slice->ndeny, value, path);
	if (!var_allowed(line) || strlen(value) >= VALUE_MAX || slice->nvars >= MAX_SLICE_VARS) {
		log_error("%s: '%s' is not a slice variable", path, line);
		return -1;
	}
	strcpy(slice->vars[slice->nvars].name, line);
	strcpy(slice->vars[slice->nvars].value, value);
	slice->nvars++;
	return 0;
}

int slice_read(const char *dir, unsigned int job_id, struct slice *slice)
{
	char path[VALUE_MAX + 16], line[512];
	struct stat st;
	FILE *file;
	int fd, rc = 0;

	memset(slice, 0, sizeof(*slice));
	snprintf(path, sizeof(path), "%s/%u", dir, job_id);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		log_error("cannot open slice file %s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH))) {
		log_error("refusing slice file %s: it must be a regular file owned by root, writable by root only",
			  path);
		close(fd);
		return -1;
	}
	file = fdopen(fd, "r");
	if (file == NULL) {
		close(fd);
		return -1;
	}
	while (rc == 0 && fgets(line, sizeof(line), file) != NULL)
		rc = parse_line(slice, line, path);
	fclose(file);
	slice->found = rc == 0;
	return rc;
}

/* The cgroups a process (0: this one) is in, as /proc/<pid>/cgroup names them: the v1 devices one
 * and the unified (v2) one; either is left empty when there is none. */
void task_cgroups(pid_t pid, char *devices, size_t devices_len, char *unified, size_t unified_len)
{
	char line[4096];
	FILE *file;

	devices[0] = unified[0] = '\0';
	if (pid == 0)
		snprintf(line, sizeof(line), "/proc/self/cgroup");
	else
		snprintf(line, sizeof(line), "/proc/%d/cgroup", (int)pid);
	file = fopen(line, "re");
	if (file == NULL)
		return;
	while (fgets(line, sizeof(line), file) != NULL) {
		char *controllers = strchr(line, ':');
		char *path = controllers ? strchr(controllers + 1, ':') : NULL;

		if (path == NULL)
			continue;
		*controllers = *path++ = '\0';  /* line: the hierarchy id, controllers + 1: its controllers */
		path[strcspn(path, "\n")] = '\0';
		if (strcmp(controllers + 1, "devices") == 0)
			snprintf(devices, devices_len, "%s", path);
		else if (strcmp(line, "0") == 0 && controllers[1] == '\0')
			snprintf(unified, unified_len, "%s", path);
	}
	fclose(file);
}

static int write_rule(const char *file_path, const char *rule)
{
	int fd = open(file_path, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0) {
		log_error("cannot open %s: %s", file_path, strerror(errno));
		return -1;
	}
	n = write(fd, rule, strlen(rule));
	close(fd);
	if (n < 0) {
		log_error("cannot write '%s' to %s: %s", rule, file_path, strerror(errno));
		return -1;
	}
	return 0;
}

/* Write the allow rules into dir and every cgroup below it, parents first (a v1 child never gets
 * more than its parent). */
static int allow_below(const struct slice *slice, const char *dir, int depth)
{
	char file_path[PATH_MAX], child[PATH_MAX];
	struct dirent *entry;
	DIR *listing;
	int rc = 0;

	if ((size_t)snprintf(file_path, sizeof(file_path), "%s/devices.allow", dir) >= sizeof(file_path))
		return -1;
	for (size_t i = 0; i < slice->nallow; i++)
		if (write_rule(file_path, slice->allow[i]) < 0)
			return -1;
	if (depth >= 4)  /* job_<id>/step_<s>/task_<n> is as deep as Slurm goes */
		return 0;
	listing = opendir(dir);
	if (listing == NULL) {
		log_error("cannot list %s: %s", dir, strerror(errno));
		return -1;
	}
	while (rc == 0 && (entry = readdir(listing)) != NULL) {
		if (entry->d_type != DT_DIR || entry->d_name[0] == '.')
			continue;
		if ((size_t)snprintf(child, sizeof(child), "%s/%s", dir, entry->d_name) >= sizeof(child))
			rc = -1;
		else if (allow_below(slice, child, depth + 1) < 0 && errno != ENOENT)
			rc = -1;  /* a step that ended meanwhile took its cgroup with it: not an error */
	}
	closedir(listing);
	return rc;
}

/* Allow the job's GPU in the job's devices cgroup and every cgroup below it, and deny the node's
 * other GPUs in the task's own. On v1 Slurm writes its device rules into the job's cgroup again
 * at every step's start, denying the GPU device files of GRES the job was not given (a slice is
 * vgpu, not gpu), and a deny on a parent takes the device from every step below it: so each new
 * step's task gives the GPU back to all of its job's steps, the batch step included. Run from
 * task_post_fork, after Slurm's own rules for the step. A task in a cgroup v2 job cgroup is left
 * to cgroup2_fence. */
int slice_apply_devices(const struct slice *slice, const char *devices_root, pid_t task)
{
	char cgroup[VALUE_MAX], unified[4096], dir[2 * VALUE_MAX], file_path[2 * VALUE_MAX + 16];
	char *job_level, *job_end;

	if (slice->nallow == 0 && slice->ndeny == 0)
		return 0;
	task_cgroups(task, cgroup, sizeof(cgroup), unified, sizeof(unified));
	job_level = strstr(cgroup, "/job_");
	if (job_level == NULL && strstr(unified, "/step_") != NULL)
		return 0;
	if (job_level == NULL) {
		/* Never write rules outside the job's own cgroup (the root cgroup is the whole machine). */
		log_info("task is in no job devices cgroup (ConstrainDevices=no?): GPU device rules not applied");
		return 0;
	}
	job_end = strchr(job_level + 1, '/');
	snprintf(dir, sizeof(dir), "%s%.*s", devices_root,
		 (int)(job_end ? (size_t)(job_end - cgroup) : strlen(cgroup)), cgroup);
	if (allow_below(slice, dir, 1) < 0)
		return -1;
	for (size_t i = 0; i < slice->ndeny; i++) {
		snprintf(file_path, sizeof(file_path), "%s%s/devices.deny", devices_root, cgroup);
		if (write_rule(file_path, slice->deny[i]) < 0)
			return -1;
	}
	return 0;
}
