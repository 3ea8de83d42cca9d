"""Which Slurm job a GPU process belongs to, read from /proc the way Slurm's own cgroups name it.

cgroup v1 (proctrack/cgroup) puts every process of a job under ``slurm_<node>/uid_<uid>/job_<id>``
in each hierarchy (Debian's multi-slurmd build; ``slurm/uid_...`` on a plain one). cgroup v2
(cgroup/v2) puts it under ``<node>_slurmstepd.scope/job_<id>`` in the unified hierarchy (the ``0::``
line; ``slurmstepd.scope`` on a plain build), and since Slurm 26.05 under the job's SLUID instead of
``job_<id>`` (unless CgroupJobIdPaths=yes). A SLUID names no job id: the process's environment
does (``SLURM_JOB_SLUID``, ``SLURM_JOB_ID``, set by slurmstepd), trusted only when its SLUID is the
one of the cgroup, which the job's user cannot change. A process outside any job cgroup belongs to
no job, whatever its environment says: anyone can start a process with ``SLURM_JOB_ID`` set.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_V1_JOB = re.compile(r"/slurm(?:_(?P<node>[^/]+))?/uid_\d+/job_(?P<job>\d+)(?:/|$)")
_V2_JOB = re.compile(r"/(?:(?P<node>[^/]+)_)?slurmstepd\.scope/(?:job_(?P<job>\d+)|(?P<sluid>s[0-9A-Z]+))(?:/|$)")


@dataclass(frozen=True)
class JobCgroup:
    """A job's cgroup as a line of ``/proc/<pid>/cgroup`` names it."""

    path: str  # the job's directory, from the root of its hierarchy (as the reader's namespace sees it)
    unified: bool  # in the v2 hierarchy
    job_id: int | None  # None: a SLUID directory whose job is not known yet
    sluid: str | None = None


def job_cgroup(text: str, node: str) -> JobCgroup | None:
    """The job cgroup of ``node`` (or of a plain build) in a ``/proc/<pid>/cgroup`` text; None when
    the process sits in none."""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        unified = hierarchy == "0" and controllers == ""
        match = (_V2_JOB if unified else _V1_JOB).search(path)
        if match and match.group("node") in (None, node):
            job, sluid = match.group("job"), match.groupdict().get("sluid")
            return JobCgroup(path[:match.end()].rstrip("/"), unified, int(job) if job else None, sluid)
    return None


def job_from_environ(raw: bytes, sluid: str | None = None) -> int | None:
    """``SLURM_JOB_ID`` from a ``/proc/<pid>/environ`` blob (NUL-separated); with ``sluid``, only
    when the same environment's ``SLURM_JOB_SLUID`` is that SLUID."""
    env: dict[bytes, bytes] = {}
    for entry in raw.split(b"\0"):
        key, _, value = entry.partition(b"=")
        env.setdefault(key, value)  # the first one, as getenv(3) finds it
    job = env.get(b"SLURM_JOB_ID", b"")
    if sluid is not None and env.get(b"SLURM_JOB_SLUID") != sluid.encode():
        return None
    return int(job) if job.isdigit() else None


def job_cgroup_of(pid: int, node: str, proc: Path = PROC) -> JobCgroup | None:
    """The job cgroup of this node a process is in, its job id filled in (a SLUID's from the
    process's environment); None when it is in none or gone."""
    try:
        cgroup = job_cgroup((proc / str(pid) / "cgroup").read_text(), node)
        if cgroup is not None and cgroup.job_id is None:
            cgroup = dataclasses.replace(
                cgroup, job_id=job_from_environ((proc / str(pid) / "environ").read_bytes(), cgroup.sluid))
        return cgroup
    except OSError:
        return None


def job_of(pid: int, node: str, proc: Path = PROC) -> int | None:
    """The job a process belongs to; None when it is gone or sits in no job cgroup."""
    cgroup = job_cgroup_of(pid, node, proc)
    return None if cgroup is None else cgroup.job_id
