/* slurm-vgpu SPANK plugin: every Slurm callback, dispatched by context.
 *
 * Local (sbatch, srun, salloc): --vgpu-class, --vgpu-mem, --vgpu-profile and --vgpu-slo are checked (a bad value stops the
 * command before it submits) and exported with spank_job_control_setenv, so job_submit.lua finds
 * them in spank_job_env and the prolog as SPANK_VGPU_* variables.
 * Remote (slurmstepd, each task): the slice file the prolog wrote decides the task's GPU devices
 * and its CUDA/MPS variables, replacing whatever the user set. The devices are fenced in
 * task_post_fork, once Slurm has set the step's own device rules (slice.c and cgroup2.c say why). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

SPANK_PLUGIN(slurm-vgpu, 1);

static struct plugin_config config;
static char *option_class;
static char *option_memory;
static char *option_profile;
static char *option_slo;
static struct slice task_slice;

static int take_option(char **dest, const char *value, const char *name, const char *(*check)(const char *))
{
	const char *hint = check(value ? value : "");

	if (hint != NULL) {
		log_error("invalid --%s='%s': %s", name, value ? value : "", hint);
		return -1;
	}
	free(*dest);
	*dest = strdup(value);
	return *dest ? 0 : -1;
}

static int on_class(int val, const char *optarg, int remote)
{
	(void)val;
	(void)remote;
	return take_option(&option_class, optarg, "vgpu-class", class_check);
}

static int on_memory(int val, const char *optarg, int remote)
{
	(void)val;
	(void)remote;
	return take_option(&option_memory, optarg, "vgpu-mem", memory_check);
}

static int on_profile(int val, const char *optarg, int remote)
{
	(void)val;
	(void)remote;
	return take_option(&option_profile, optarg, "vgpu-profile", profile_check);
}

static int on_slo(int val, const char *optarg, int remote)
{
	(void)val;
	(void)remote;
	return take_option(&option_slo, optarg, "vgpu-slo", slo_check);
}

/* Registered in slurm_spank_init: Slurm ignores a static spank_options table in sbatch/salloc. */
static struct spank_option options[] = {
	{ "vgpu-class", "CLASS",
	  "[slurm-vgpu] service class of the GPU slice: " VGPU_CLASS_NAMES, 1, 0,
	  on_class },
	{ "vgpu-mem", "SIZE", "[slurm-vgpu] GPU memory cap of the slice, e.g. 8G or 512M", 1, 0, on_memory },
	{ "vgpu-profile", "NAME", "[slurm-vgpu] the profiled workload the slice is sized for (with --vgpu-slo)", 1, 0,
	  on_profile },
	{ "vgpu-slo", "TARGET", "[slurm-vgpu] latency target the slice is sized for, e.g. " VGPU_SLO_EXAMPLE, 1, 0,
	  on_slo },
	SPANK_OPTIONS_TABLE_END
};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	if (config_parse(&config, ac, av) < 0)
		return -1;
	for (struct spank_option *opt = options; opt->name != NULL; opt++) {
		if (spank_option_register(sp, opt) != ESPANK_SUCCESS) {
			log_error("cannot register --%s", opt->name);
			return -1;
		}
	}
	return 0;
}

static int export(spank_t sp, const char *name, const char *value)
{
	if (value == NULL)
		return 0;
	if (spank_job_control_setenv(sp, name, value, 1) != ESPANK_SUCCESS) {
		log_error("cannot export %s for the job", name);
		return -1;
	}
	return 0;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	if (spank_context() != S_CTX_LOCAL && spank_context() != S_CTX_ALLOCATOR)
		return 0;
	if (export(sp, SPANK_ENV_CLASS, option_class) < 0 || export(sp, SPANK_ENV_MEMORY, option_memory) < 0 ||
	    export(sp, SPANK_ENV_PROFILE, option_profile) < 0 || export(sp, SPANK_ENV_SLO, option_slo) < 0)
		return -1;
	return 0;
}

int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
	uint32_t job_id;

	(void)ac;
	(void)av;
	if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS) {
		log_error("cannot get the job id");
		return -1;
	}
	if (slice_read(config.slice_dir, job_id, &task_slice) < 0)
		return -1;
	if (task_slice.found)
		return 0;
	if (option_class != NULL || option_memory != NULL || option_profile != NULL || option_slo != NULL) {
		/* The user asked for a slice and the prolog set none up: fail rather than run unfenced. */
		log_error("job %u has --vgpu-class/--vgpu-mem/--vgpu-profile/--vgpu-slo but no GPU slice on this node: "
			  "ask for one with "
			  "--gres=vgpu:N, or see `scontrol show job %u` (AdminComment) for why it has none",
			  job_id, job_id);
		return -1;
	}
	return 0;
}

int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
	struct slice slice;
	uint32_t job_id;
	pid_t task;

	(void)ac;
	(void)av;
	if (!spank_remote(sp))
		return 0;
	if (spank_get_item(sp, S_JOB_ID, &job_id) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_TASK_PID, &task) != ESPANK_SUCCESS) {
		log_error("cannot get the job id and task pid");
		return -1;
	}
	if (slice_read(config.slice_dir, job_id, &slice) < 0)
		return -1;
	if (!slice.found)
		return 0;
	if (slice_apply_devices(&slice, config.devices_cgroup, task) < 0)
		return -1;
	return cgroup2_fence(&slice, task);
}

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	(void)ac;
	(void)av;
	for (size_t i = 0; i < task_slice.nvars; i++) {
		if (spank_setenv(sp, task_slice.vars[i].name, task_slice.vars[i].value, 1) != ESPANK_SUCCESS) {
			log_error("cannot set %s for the task", task_slice.vars[i].name);
			return -1;
		}
	}
	return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	(void)sp;
	(void)ac;
	(void)av;
	free(option_class);
	free(option_memory);
	option_class = option_memory = NULL;
	return 0;
}
