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

/* The options, as exported to the job for job_submit.lua (spank_job_control_setenv). */
#define SPANK_ENV_CLASS "VGPU_CLASS"
#define SPANK_ENV_MEMORY "VGPU_MEM"

/* The slice file: RunDir's jobs/JOBID, KEY=VALUE lines, '#' comments. */
#define SLICE_DIR_DEFAULT "/run/slurm-vgpu/jobs"
#define SLICE_VARS "CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "SLURM_STEP_GRES"
#define SLICE_DEVICE_ALLOW "DEVICE_ALLOW"
#define SLICE_DEVICE_DENY "DEVICE_DENY"

#endif
