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
	strcpy(config->slice_dir, SLICE_DIR_DEFAULT);
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
	static const char *const classes[] = { VGPU_CLASSES };

	for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
		if (strcmp(value, classes[i]) == 0)
			return NULL;
	return VGPU_CLASS_HINT;
}

/* The SIZE grammar of contract.h (slurm_vgpu.contract.memory_mib): NULL and the size in MiB, or what
 * to write instead. */
const char *memory_parse(const char *value, unsigned long long *mib)
{
	static const struct {
		char letter;
		unsigned long long kib;
	} units[] = { VGPU_SIZE_UNITS };
	size_t digits = strspn(value, "0123456789");
	const char *rest = value + digits;
	unsigned long long number = 0, kib = VGPU_SIZE_BARE_KIB;

	if (digits == 0 || digits > VGPU_SIZE_MAX_DIGITS)
		return VGPU_SIZE_HINT;
	for (size_t i = 0; i < digits; i++)
		number = number * 10 + (unsigned long long)(value[i] - '0');
	for (size_t i = 0; *rest && i < sizeof(units) / sizeof(units[0]); i++)
		if (toupper((unsigned char)*rest) == units[i].letter) {
			kib = units[i].kib;
			rest++;
			break;
		}
	if (*rest == 'i' || *rest == 'I')
		rest++;
	if (*rest == 'B' || *rest == 'b')
		rest++;
	*mib = (number * kib + 1023) / 1024;
	return *rest || *mib == 0 ? VGPU_SIZE_HINT : NULL;
}

const char *memory_check(const char *value)
{
	unsigned long long mib;

	return memory_parse(value, &mib);
}
