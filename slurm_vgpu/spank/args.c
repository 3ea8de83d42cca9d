/* Strict parsing: plugstack.conf arguments (an unknown or malformed one stops the plugin from
 * loading) and the user's option values (a bad one makes sbatch/srun/salloc exit before submit). */
#include <ctype.h>
#include <string.h>

#include "common.h"

static int set_path(char *dest, const char *arg, const char *key)
{
	const char *value = arg + strlen(key) + 1;

	if (value[0] != '/' || strlen(value) >= VALUE_MAX) {
		log_error("plugstack.conf: %s must be an absolute path, got '%s'", key, value);
		return -1;
	}
	strcpy(dest, value);
	return 0;
}

int config_parse(struct plugin_config *config, int ac, char **av)
{
	memset(config, 0, sizeof(*config));
	strcpy(config->slice_dir, "/run/slurm-vgpu/jobs");
	strcpy(config->devices_cgroup, "/sys/fs/cgroup/devices");
	for (int i = 0; i < ac; i++) {
		if (strncmp(av[i], "slice_dir=", 10) == 0) {
			if (set_path(config->slice_dir, av[i], "slice_dir") < 0)
				return -1;
		} else if (strncmp(av[i], "devices_cgroup=", 15) == 0) {
			if (set_path(config->devices_cgroup, av[i], "devices_cgroup") < 0)
				return -1;
		} else {
			log_error("plugstack.conf: unknown argument '%s'; valid: slice_dir=PATH devices_cgroup=PATH",
				  av[i]);
			return -1;
		}
	}
	return 0;
}

const char *class_check(const char *value)
{
	static const char *const classes[] = { "latency", "throughput", "best-effort" };

	for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
		if (strcmp(value, classes[i]) == 0)
			return NULL;
	return "write --vgpu-class=latency, --vgpu-class=throughput or --vgpu-class=best-effort";
}

/* NUMBER[K|M|G|T][i][B], case-insensitive, more than zero; a bare number is MiB (as in Slurm's --mem). */
const char *memory_check(const char *value)
{
	static const char *const hint =
		"write --vgpu-mem=SIZE as a whole number with an optional unit K, M, G or T, e.g. --vgpu-mem=8G or --vgpu-mem=512M";
	size_t digits = strspn(value, "0123456789");
	const char *unit = value + digits;
	int nonzero = 0;

	if (digits == 0 || digits > 9)
		return hint;
	for (size_t i = 0; i < digits; i++)
		nonzero |= value[i] != '0';
	if (!nonzero)
		return hint;
	if (*unit && strchr("KMGTkmgt", *unit))
		unit++;
	if (*unit == 'i' || *unit == 'I')
		unit++;
	if (*unit == 'B' || *unit == 'b')
		unit++;
	return *unit ? hint : NULL;
}
