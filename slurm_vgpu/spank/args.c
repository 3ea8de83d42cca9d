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

const char *profile_check(const char *value)
{
	size_t length = strlen(value);

	if (length == 0 || length > VGPU_PROFILE_NAME_MAX || !isalnum((unsigned char)value[0]))
		return VGPU_PROFILE_HINT;
	for (size_t i = 0; i < length; i++)
		if (!isalnum((unsigned char)value[i]) && strchr(VGPU_PROFILE_PUNCTUATION, value[i]) == NULL)
			return VGPU_PROFILE_HINT;
	return NULL;
}

/* NUMBER (contract.h) at the start of text: its length and whether it is above 0; 0 when none. */
static size_t slo_number(const char *text, int *positive)
{
	size_t digits = strspn(text, "0123456789"), fraction = 0;

	if (digits == 0 || digits > VGPU_SLO_DIGITS_MAX)
		return 0;
	*positive = strspn(text, "0") < digits;
	if (text[digits] == '.') {
		fraction = strspn(text + digits + 1, "0123456789");
		if (fraction == 0 || fraction > VGPU_SLO_FRACTION_MAX)
			return 0;
		*positive = *positive || strspn(text + digits + 1, "0") < fraction;
		fraction++;
	}
	return digits + fraction;
}

/* One KEY:VALUE of a target, value from value to end: whether it is one. */
static int slo_value_ok(const char *value, const char *end, int latency)
{
	static const char *const latency_units[] = { VGPU_SLO_LATENCY_UNITS };
	int positive = 0;
	size_t number = slo_number(value, &positive), unit = (size_t)(end - value) - number;

	if (number == 0 || !positive || (size_t)(end - value) <= number)
		return 0;
	if (!latency)
		return unit == strlen(VGPU_SLO_RATE_UNIT) && strncmp(value + number, VGPU_SLO_RATE_UNIT, unit) == 0;
	for (size_t i = 0; i < sizeof(latency_units) / sizeof(latency_units[0]); i++)
		if (unit == strlen(latency_units[i]) && strncmp(value + number, latency_units[i], unit) == 0)
			return 1;
	return 0;
}

const char *slo_check(const char *value)
{
	int seen_p99 = 0, seen_rate = 0;
	const char *item = value;

	for (;;) {
		const char *end = strchr(item, ',');
		const char *colon;

		if (end == NULL)
			end = item + strlen(item);
		colon = memchr(item, ':', (size_t)(end - item));
		if (colon == NULL)
			return VGPU_SLO_HINT;
		if (colon - item == 3 && strncmp(item, "p99", 3) == 0) {
			if (seen_p99++ || !slo_value_ok(colon + 1, end, 1))
				return VGPU_SLO_HINT;
		} else if (colon - item == 4 && strncmp(item, "rate", 4) == 0) {
			if (seen_rate++ || !slo_value_ok(colon + 1, end, 0))
				return VGPU_SLO_HINT;
		} else {
			return VGPU_SLO_HINT;
		}
		if (*end == '\0')
			break;
		item = end + 1;
	}
	return seen_p99 ? NULL : VGPU_SLO_HINT;
}
