/* The GPU fence on cgroup v2. There is no devices.allow there: Slurm's cgroup/v2 plugin attaches a
 * BPF device program (one per cgroup) at the job level, and for a step's tasks at the step_<s>/user
 * and task_<n> levels, denying every GRES device file the job was not given, which for a vgpu job
 * includes its own GPU. Only the lowest program on a process's path decides, so each of those
 * levels gets a program of ours in place of Slurm's (attaching with the same flags replaces it,
 * atomically): the slice's DEVICE_DENY rules, then its DEVICE_ALLOW rules, then Slurm's own
 * instructions, copied from its program, so every other device is decided as Slurm decided it.
 * Levels Slurm left alone inherit from above, and a level already carrying our program (an earlier
 * task or step of the job) is left as it is.
 * slurmstepd moves a task into task_<n> and attaches that level's program after forking it, while
 * the task runs task_init_privileged; task_post_fork comes after both, before the task may exec. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/bpf.h>
#include <linux/magic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"

#define PROGRAM_NAME "slurm_vgpu"  /* how a level already fenced by us is recognised */
#define MAX_LEVEL_PROGRAMS 8

static int bpf(int cmd, union bpf_attr *attr)
{
	return (int)syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

/* ---- the program ---------------------------------------------------------------------------- */

struct program {
	struct bpf_insn *insns;
	size_t len, cap;
};

static int emit(struct program *p, uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm)
{
	if (p->len == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 64;
		struct bpf_insn *grown = realloc(p->insns, cap * sizeof(*grown));

		if (grown == NULL)
			return -1;
		p->insns = grown;
		p->cap = cap;
	}
	p->insns[p->len++] = (struct bpf_insn){ .code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm };
	return 0;
}

/* The context (struct bpf_cgroup_dev_ctx): access_type = access << 16 | type, then major, minor.
 * r2 = type, r3 = access, r4 = major, r5 = minor; r1 (the context) is left for what follows. */
static int emit_load_request(struct program *p)
{
	return emit(p, BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_1, 0, 0) ||
	       emit(p, BPF_ALU | BPF_AND | BPF_K, BPF_REG_2, 0, 0, 0xffff) ||
	       emit(p, BPF_LDX | BPF_W | BPF_MEM, BPF_REG_3, BPF_REG_1, 0, 0) ||
	       emit(p, BPF_ALU | BPF_RSH | BPF_K, BPF_REG_3, 0, 0, 16) ||
	       emit(p, BPF_LDX | BPF_W | BPF_MEM, BPF_REG_4, BPF_REG_1, 4, 0) ||
	       emit(p, BPF_LDX | BPF_W | BPF_MEM, BPF_REG_5, BPF_REG_1, 8, 0) ? -1 : 0;
}

/* One rule, eight instructions: on a match return the verdict, else fall through. A deny
 * matches a request for any of its accesses, an allow one asking for no more than it grants (as
 * devices.deny and devices.allow do on v1). */
static int emit_rule(struct program *p, const struct device_rule *rule, int allow)
{
	int32_t access = 0;

	for (const char *c = rule->access; *c; c++)
		access |= *c == 'r' ? BPF_DEVCG_ACC_READ : *c == 'w' ? BPF_DEVCG_ACC_WRITE : BPF_DEVCG_ACC_MKNOD;
	return emit(p, BPF_JMP | BPF_JNE | BPF_K, BPF_REG_2, 0, 7,
		    rule->type == 'c' ? BPF_DEVCG_DEV_CHAR : BPF_DEVCG_DEV_BLOCK) ||
	       emit(p, BPF_JMP | BPF_JNE | BPF_K, BPF_REG_4, 0, 6, (int32_t)rule->major) ||
	       emit(p, BPF_JMP | BPF_JNE | BPF_K, BPF_REG_5, 0, 5, (int32_t)rule->minor) ||
	       emit(p, BPF_ALU | BPF_MOV | BPF_X, BPF_REG_6, BPF_REG_3, 0, 0) ||
	       emit(p, BPF_ALU | BPF_AND | BPF_K, BPF_REG_6, 0, 0, allow ? ~access & 0x7 : access) ||
	       emit(p, BPF_JMP | (allow ? BPF_JNE : BPF_JEQ) | BPF_K, BPF_REG_6, 0, 2, 0) ||
	       emit(p, BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, allow) ||
	       emit(p, BPF_JMP | BPF_EXIT, 0, 0, 0, 0) ? -1 : 0;
}

static int emit_rules(struct program *p, const char rules[][32], size_t n, int allow)
{
	struct device_rule rule;

	for (size_t i = 0; i < n; i++)
		if (device_rule_parse(rules[i], &rule) < 0 || emit_rule(p, &rule, allow) < 0)
			return -1;
	return 0;
}

/* Slurm's instructions can follow ours only if they stand alone: no map, no helper call, none of
 * the registers the kernel adds when it hardens a program. */
static int inlinable(const struct bpf_insn *insns, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (insns[i].code == (BPF_LD | BPF_IMM | BPF_DW) || insns[i].code == (BPF_JMP | BPF_CALL) ||
		    insns[i].dst_reg > BPF_REG_10 || insns[i].src_reg > BPF_REG_10)
			return 0;
	}
	return n > 0;
}

/* Ours for one level: the slice's rules, then what Slurm's program there does (its instructions),
 * or Slurm's default (allow) when they cannot be reused. */
static int build_program(struct program *p, const struct slice *slice, const struct bpf_insn *slurm, size_t n)
{
	if (emit_load_request(p) < 0 || emit_rules(p, slice->deny, slice->ndeny, 0) < 0 ||
	    emit_rules(p, slice->allow, slice->nallow, 1) < 0)
		return -1;
	if (inlinable(slurm, n)) {
		for (size_t i = 0; i < n; i++)
			if (emit(p, slurm[i].code, slurm[i].dst_reg, slurm[i].src_reg, slurm[i].off, slurm[i].imm) < 0)
				return -1;
		return 0;
	}
	log_info("Slurm's device program cannot be extended; the GPU fence replaces it (other devices allowed)");
	return emit(p, BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1) || emit(p, BPF_JMP | BPF_EXIT, 0, 0, 0, 0) ? -1 : 0;
}

/* ---- the kernel's side ---------------------------------------------------------------------- */

/* The program attached at one cgroup: its name and instructions (caller frees *insns). */
static int program_info(uint32_t id, char name[BPF_OBJ_NAME_LEN], struct bpf_insn **insns, size_t *n)
{
	union bpf_attr attr;
	struct bpf_prog_info info;
	int fd, rc = -1;

	memset(&attr, 0, sizeof(attr));
	attr.prog_id = id;
	fd = bpf(BPF_PROG_GET_FD_BY_ID, &attr);
	if (fd < 0)
		return -1;
	for (int pass = 0; pass < 2; pass++) {
		uint32_t bytes = pass ? info.xlated_prog_len : 0;

		memset(&info, 0, sizeof(info));
		info.xlated_prog_len = bytes;
		info.xlated_prog_insns = (uintptr_t)*insns;
		memset(&attr, 0, sizeof(attr));
		attr.info.bpf_fd = fd;
		attr.info.info_len = sizeof(info);
		attr.info.info = (uintptr_t)&info;
		if (bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) < 0)
			goto out;
		if (pass == 0 && (*insns = malloc(info.xlated_prog_len + 1)) == NULL)
			goto out;
	}
	memcpy(name, info.name, BPF_OBJ_NAME_LEN);
	*n = info.xlated_prog_len / sizeof(struct bpf_insn);
	rc = 0;
out:
	close(fd);
	return rc;
}

static int load(const struct program *p)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
	attr.insns = (uintptr_t)p->insns;
	attr.insn_cnt = (uint32_t)p->len;
	attr.license = (uintptr_t)"GPL";  /* it carries Slurm's (GPL) instructions */
	strncpy(attr.prog_name, PROGRAM_NAME, sizeof(attr.prog_name) - 1);
	return bpf(BPF_PROG_LOAD, &attr);
}

/* Fence one level, if Slurm fenced it: returns 1 when the level carries our program now (or did
 * already), 0 when it has none, -1 on error. */
static int fence_level(const struct slice *slice, const char *dir)
{
	uint32_t ids[MAX_LEVEL_PROGRAMS];
	char name[BPF_OBJ_NAME_LEN];
	struct program program = { 0 };
	struct bpf_insn *slurm = NULL;
	union bpf_attr attr;
	size_t n = 0;
	int fd, prog_fd = -1, rc = -1;

	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		log_error("cannot open cgroup %s: %s", dir, strerror(errno));
		return -1;
	}
	memset(&attr, 0, sizeof(attr));
	attr.query.target_fd = fd;
	attr.query.attach_type = BPF_CGROUP_DEVICE;
	attr.query.prog_ids = (uintptr_t)ids;
	attr.query.prog_cnt = MAX_LEVEL_PROGRAMS;
	if (bpf(BPF_PROG_QUERY, &attr) < 0) {
		log_error("cannot list the device programs of cgroup %s: %s", dir, strerror(errno));
		goto out;
	}
	if (attr.query.prog_cnt == 0) {
		rc = 0;
		goto out;
	}
	if (attr.query.prog_cnt > 1 || (attr.query.attach_flags & BPF_F_ALLOW_MULTI)) {
		log_error("cgroup %s has %u device programs in multi mode; Slurm attaches one: GPU not fenced",
			  dir, attr.query.prog_cnt);
		goto out;
	}
	if (program_info(ids[0], name, &slurm, &n) < 0) {
		log_error("cannot read the device program of cgroup %s: %s", dir, strerror(errno));
		goto out;
	}
	if (strcmp(name, PROGRAM_NAME) == 0) {
		rc = 1;
		goto out;
	}
	if (build_program(&program, slice, slurm, n) < 0 || (prog_fd = load(&program)) < 0) {
		log_error("cannot load the GPU fence for cgroup %s: %s", dir, strerror(errno));
		goto out;
	}
	{
		uint32_t flags = attr.query.attach_flags;

		memset(&attr, 0, sizeof(attr));
		attr.target_fd = fd;
		attr.attach_bpf_fd = prog_fd;
		attr.attach_type = BPF_CGROUP_DEVICE;
		attr.attach_flags = flags;  /* the same flags: the kernel then replaces Slurm's program */
	}
	if (bpf(BPF_PROG_ATTACH, &attr) < 0) {
		log_error("cannot attach the GPU fence to cgroup %s: %s", dir, strerror(errno));
		goto out;
	}
	rc = 1;
out:
	if (prog_fd >= 0)
		close(prog_fd);
	free(program.insns);
	free(slurm);
	close(fd);
	return rc;
}

/* ---- where the levels are ------------------------------------------------------------------- */

/* The directory of a unified-hierarchy cgroup (as /proc/self/cgroup names it) where the cgroup2
 * filesystem is mounted in this mount namespace. */
static int unified_dir(const char *cgroup, char *dir, size_t len)
{
	char line[PATH_MAX + 256];
	FILE *file = fopen("/proc/self/mountinfo", "re");
	int rc = -1;

	if (file == NULL)
		return -1;
	while (rc < 0 && fgets(line, sizeof(line), file) != NULL) {
		char root[PATH_MAX], mountpoint[PATH_MAX], *fstype = strstr(line, " - ");
		struct statfs fs;
		size_t prefix;

		if (fstype == NULL || strncmp(fstype, " - cgroup2 ", 11) != 0 ||
		    sscanf(line, "%*s %*s %*s %4095s %4095s", root, mountpoint) != 2)
			continue;
		prefix = strcmp(root, "/") == 0 ? 0 : strlen(root);
		if (strncmp(cgroup, root, prefix) != 0 || (cgroup[prefix] != '/' && cgroup[prefix] != '\0'))
			continue;
		if ((size_t)snprintf(dir, len, "%s%s", mountpoint, cgroup + prefix) < len &&
		    statfs(dir, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC)
			rc = 0;
	}
	fclose(file);
	return rc;
}

/* fence_level on the first len characters of dir followed by suffix. */
static int fence_at(const struct slice *slice, const char *dir, size_t len, const char *suffix)
{
	char level[PATH_MAX];

	if ((size_t)snprintf(level, sizeof(level), "%.*s%s", (int)len, dir, suffix) >= sizeof(level))
		return -1;
	return fence_level(slice, level);
}

int cgroup2_fence(const struct slice *slice, pid_t task)
{
	char devices[PATH_MAX], cgroup[PATH_MAX], dir[PATH_MAX];
	const char *step = NULL;
	size_t job, step_end;
	int rc, fenced;

	if (slice->nallow == 0 && slice->ndeny == 0)
		return 0;
	/* <job>/step_<s>/user/task_<n>, the job's directory being job_<id> or (26.05) its SLUID: the
	 * step is the last step_ directory with a directory above it. A task in a v1 job cgroup, or in
	 * none, is slice_apply_devices'. */
	task_cgroups(task, devices, sizeof(devices), cgroup, sizeof(cgroup));
	for (const char *c = strstr(cgroup, "/step_"); c; c = strstr(c + 1, "/step_"))
		if (c != cgroup)
			step = c;
	if (strstr(devices, "/job_") != NULL || step == NULL)
		return 0;
	if (unified_dir(cgroup, dir, sizeof(dir)) < 0) {
		log_error("task %d is in cgroup %s, which is not a cgroup2 directory here: GPU not fenced",
			  (int)task, cgroup);
		return -1;
	}
	/* dir ends as cgroup does: the same levels, as lengths of dir */
	job = strlen(dir) - strlen(step);
	step_end = job + 1 + strcspn(dir + job + 1, "/");
	if ((rc = fence_at(slice, dir, job, "")) < 0)
		return -1;
	fenced = rc;
	if ((rc = fence_at(slice, dir, step_end, "/user")) < 0)
		return -1;
	fenced += rc;
	if (strncmp(dir + step_end, "/user/task_", 11) == 0) {
		if ((rc = fence_at(slice, dir, step_end + 6 + strcspn(dir + step_end + 6, "/"), "")) < 0)
			return -1;
		fenced += rc;
	}
	if (fenced == 0)
		log_info("Slurm attached no device program to job cgroup %.*s (ConstrainDevices=no?): "
			 "GPU device rules not applied", (int)job, dir);
	return 0;
}
