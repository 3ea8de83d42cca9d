"""Which Slurm job a GPU process belongs to, read from /proc the way Slurm's own cgroups name it.

proctrack/cgroup puts every process of a job under ``slurm_<node>/uid_<uid>/job_<id>`` (Debian's
multi-slurmd build; ``slurm/uid_...`` on a plain one). A process outside any job cgroup (no cgroup
plugin) is matched by ``SLURM_JOB_ID`` in its environment, which slurmstepd sets for every task.
"""
from __future__ import annotations

import re
from pathlib import Path

_JOB_CGROUP = re.compile(r"/slurm(?:_(?P<node>[^/]+))?/uid_\d+/job_(?P<job>\d+)(?:/|$)")


def job_from_cgroup(text: str, node: str) -> int | None:
    """The job id in a ``/proc/<pid>/cgroup`` text, for a job of ``node`` (or of a plain ``slurm``
    root); None when the process sits in no job cgroup of this node."""
    for line in text.splitlines():
        match = _JOB_CGROUP.search(line.partition(":")[2].partition(":")[2])
        if match and match.group("node") in (None, node):
            return int(match.group("job"))
    return None


def job_from_environ(raw: bytes) -> int | None:
    """``SLURM_JOB_ID`` from a ``/proc/<pid>/environ`` blob (NUL-separated)."""
    for entry in raw.split(b"\0"):
        key, _, value = entry.partition(b"=")
        if key == b"SLURM_JOB_ID" and value.isdigit():
            return int(value)
    return None


def job_of(pid: int, node: str, proc: Path = Path("/proc")) -> int | None:
    """The job a process belongs to; None when it is gone or belongs to none."""
    try:
        job = job_from_cgroup((proc / str(pid) / "cgroup").read_text(), node)
        return job if job is not None else job_from_environ((proc / str(pid) / "environ").read_bytes())
    except OSError:
        return None
