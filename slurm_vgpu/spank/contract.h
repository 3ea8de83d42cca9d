/* contract.h: generated from slurm_vgpu/contract.py by slurm_vgpu/spank/contract.h.j2; do not edit.
 * The facts the plugin shares with job_submit.lua and the Python side: regenerate with
 * UPDATE_GOLDEN=1 pytest tests/unit/test_render_golden.py (`slurm-vgpu spank build` writes it afresh). */
#ifndef SLURM_VGPU_CONTRACT_H
#define SLURM_VGPU_CONTRACT_H

/* --vgpu-class: the SLO classes, and what to write instead of anything else. */
#define VGPU_CLASSES "latency", "throughput", "best-effort"
#define VGPU_CLASS_NAMES "latency, throughput or best-effort"
#define VGPU_CLASS_HINT "write --vgpu-class=latency, --vgpu-class=throughput or --vgpu-class=best-effort"

/* --vgpu-mem=SIZE: NUMBER[UNIT][i][B], case-insensitive; NUMBER of 1 to VGPU_SIZE_MAX_DIGITS digits,
 * UNIT one of VGPU_SIZE_UNITS (letter, KiB), none meaning VGPU_SIZE_BARE_KIB; rounded up to whole
 * MiB, at least 1. */
#define VGPU_SIZE_UNITS { 'K', 1ULL }, { 'M', 1024ULL }, { 'G', 1048576ULL }, { 'T', 1073741824ULL }
#define VGPU_SIZE_BARE_KIB 1024ULL
#define VGPU_SIZE_MAX_DIGITS 9
#define VGPU_SIZE_HINT "write --vgpu-mem=SIZE as a whole number with an optional unit K, M, G or T, e.g. --vgpu-mem=8G or --vgpu-mem=512M"

/* --vgpu-profile=NAME: 1 to VGPU_PROFILE_NAME_MAX ASCII letters, digits and VGPU_PROFILE_PUNCTUATION,
 * starting with a letter or digit. */
#define VGPU_PROFILE_NAME_MAX 64
#define VGPU_PROFILE_PUNCTUATION "._-"
#define VGPU_PROFILE_HINT "write --vgpu-profile=NAME, a profiled workload: letters, digits, '.', '_' and '-' (up to 64), e.g. --vgpu-profile=resnet50"

/* --vgpu-slo=TARGET: comma-separated KEY:VALUE, each key once, p99 required; p99's value a NUMBER and
 * one of VGPU_SLO_LATENCY_UNITS, rate's a NUMBER and VGPU_SLO_RATE_UNIT; NUMBER is 1 to
 * VGPU_SLO_DIGITS_MAX digits, optionally '.' and 1 to VGPU_SLO_FRACTION_MAX digits, above 0. */
#define VGPU_SLO_LATENCY_UNITS "ms", "s"
#define VGPU_SLO_RATE_UNIT "/s"
#define VGPU_SLO_DIGITS_MAX 9
#define VGPU_SLO_FRACTION_MAX 3
#define VGPU_SLO_EXAMPLE "p99:50ms,rate:200/s"
#define VGPU_SLO_HINT "write --vgpu-slo=p99:LATENCY[,rate:N/s], LATENCY a number with ms or s and N requests per second, both above 0, e.g. --vgpu-slo=p99:50ms,rate:200/s"

/* The options, as exported to the job for job_submit.lua (spank_job_control_setenv). */
#define SPANK_ENV_CLASS "VGPU_CLASS"
#define SPANK_ENV_MEMORY "VGPU_MEM"
#define SPANK_ENV_PROFILE "VGPU_PROFILE"
#define SPANK_ENV_SLO "VGPU_SLO"

/* The slice file: RunDir's jobs/JOBID, KEY=VALUE lines, '#' comments. */
#define SLICE_DIR_DEFAULT "/run/slurm-vgpu/jobs"
#define SLICE_VARS "CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "SLURM_STEP_GRES"
#define SLICE_DEVICE_ALLOW "DEVICE_ALLOW"
#define SLICE_DEVICE_DENY "DEVICE_DENY"

#endif
