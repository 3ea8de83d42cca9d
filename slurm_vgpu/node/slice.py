"""The slice file: what the SPANK plugin puts in each task of a job, as ``KEY=VALUE`` lines.

Written by the prolog, root-owned, mode 0644: the job's user can read it, never change it. The
plugin refuses any other owner or mode and any key outside its allowlist.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..contract import DEVICE_ALLOW, DEVICE_DENY, mps_size, slice_header, slice_placement

NVIDIA_MAJOR = 195
NVIDIACTL_MINOR = 255


@dataclass(frozen=True)
class Slice:
    job_id: int
    gpu_uuid: str
    gpu_minor: int  # /dev/nvidia<minor>: the driver's minor, not necessarily NVML's index
    share: int
    memory_mib: int | None
    pipe_dir: Path
    log_dir: Path
    placement_id: int | None = None  # the placement it was set up from: what the epilog releases


def render(slice_: Slice, node_minors: list[int], uvm_major: int | None) -> str:
    """Variables for the task, then device rules: allow the job's GPU (and the control devices),
    deny every other GPU of the node.

    ``SLURM_STEP_GRES=none``: an srun step takes all of its job's GRES unless told otherwise, so a
    second step would wait for the first one's vgpu units; the slice belongs to the job and every
    step shares it, so steps claim none and run side by side as far as CPUs and memory allow."""
    lines = [
        slice_header(slice_.job_id, slice_.placement_id),
        f"CUDA_VISIBLE_DEVICES={slice_.gpu_uuid}",
        f"CUDA_MPS_PIPE_DIRECTORY={slice_.pipe_dir}",
        f"CUDA_MPS_LOG_DIRECTORY={slice_.log_dir}",
        f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={slice_.share}",
    ]
    if slice_.memory_mib is not None:
        lines.append(f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0={mps_size(slice_.memory_mib)}")
    lines.append("SLURM_STEP_GRES=none")
    allowed = [(NVIDIA_MAJOR, slice_.gpu_minor), (NVIDIA_MAJOR, NVIDIACTL_MINOR)]
    if uvm_major is not None:
        allowed += [(uvm_major, 0), (uvm_major, 1)]
    lines += [f"{DEVICE_ALLOW}=c {major}:{minor} rw" for major, minor in allowed]
    lines += [f"{DEVICE_DENY}=c {NVIDIA_MAJOR}:{m} rwm" for m in sorted(set(node_minors)) if m != slice_.gpu_minor]
    return "\n".join(lines) + "\n"


def render_whole(job_id: int, placement_id: int) -> str:
    """A whole-GPU job's file: only the header naming its placement (what the epilog releases). It
    sets no variable and no device rule: Slurm's gres/gpu gives the job its GPU and
    CUDA_VISIBLE_DEVICES, and its steps their GRES as for any GPU job."""
    return slice_header(job_id, placement_id) + "\n"


def char_major(name: str, proc_devices: Path = Path("/proc/devices")) -> int | None:
    """The major number the kernel gave a character driver (nvidia-uvm's is dynamic)."""
    in_chars = False
    for line in proc_devices.read_text().splitlines():
        if line.strip() == "Character devices:":
            in_chars = True
        elif line.strip() == "Block devices:":
            in_chars = False
        elif in_chars and line.split()[1:] == [name]:
            return int(line.split()[0])
    return None


def write(directory: Path, job_id: int, text: str) -> Path:
    """Atomically, root-owned 0644, in a root-owned 0755 directory."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    path = directory / str(job_id)
    tmp = directory / f".{job_id}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chown(tmp, 0, 0)
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path


def placement_of(directory: Path, job_id: int) -> int | None:
    """The placement a job's slice file was set up from; None when the job has no slice file here
    (its prolog gave it none: a plain job, or one whose placement belonged to another job)."""
    try:
        with open(directory / str(job_id)) as handle:
            first = handle.readline()
    except FileNotFoundError:
        return None
    return slice_placement(first)


def remove(directory: Path, job_id: int) -> None:
    (directory / str(job_id)).unlink(missing_ok=True)
