/* slurm-vgpu SPANK plugin: shared declarations. Logic lives in Python (slurm_vgpu/node); this
 * plugin validates options at submit, and in each task applies the root-owned slice file. */
#ifndef SLURM_VGPU_COMMON_H
#define SLURM_VGPU_COMMON_H

#include <stddef.h>
#include <sys/types.h>
#include <slurm/spank.h>

#include "contract.h"

#define PLUGIN_NAME "slurm-vgpu"
#define LOG_PREFIX PLUGIN_NAME ": "

#define log_error(fmt, ...) slurm_error(LOG_PREFIX fmt, ##__VA_ARGS__)
#define log_info(fmt, ...) slurm_info(LOG_PREFIX fmt, ##__VA_ARGS__)
#define log_debug(fmt, ...) slurm_debug(LOG_PREFIX fmt, ##__VA_ARGS__)

#define MAX_SLICE_VARS 16
#define MAX_DEVICE_RULES 64
#define VALUE_MAX 256

/* args.c: plugstack.conf arguments and user option values. */
struct plugin_config {
	char slice_dir[VALUE_MAX];
	char devices_cgroup[VALUE_MAX];
};

int config_parse(struct plugin_config *config, int ac, char **av);
const char *class_check(const char *value);  /* NULL when valid, else what to write instead */
const char *memory_check(const char *value);
const char *profile_check(const char *value);
const char *slo_check(const char *value);
const char *memory_parse(const char *value, unsigned long long *mib);  /* memory_check, and the size in MiB */

/* slice.c: the slice file the prolog wrote for a job. */
struct slice_var {
	char name[64];
	char value[VALUE_MAX];
};

struct slice {
	int found;
	size_t nvars;
	struct slice_var vars[MAX_SLICE_VARS];
	size_t nallow, ndeny;
	char allow[MAX_DEVICE_RULES][32];
	char deny[MAX_DEVICE_RULES][32];
};

struct device_rule {
	char type;  /* 'c' or 'b' */
	unsigned int major, minor;
	char access[4];  /* of "rwm" */
};

int slice_read(const char *dir, unsigned int job_id, struct slice *slice);
int device_rule_parse(const char *rule, struct device_rule *parsed);  /* 0 for "c 195:3 rw" */
void task_cgroups(pid_t pid, char *devices, size_t devices_len, char *unified, size_t unified_len);
int slice_apply_devices(const struct slice *slice, const char *devices_root, pid_t task);

/* cgroup2.c: the same rules as BPF device programs, for a task in a cgroup v2 job cgroup. */
int cgroup2_fence(const struct slice *slice, pid_t task);

#endif
