"""Which Slurm job a GPU process belongs to, read from /proc the way Slurm's own cgroups name it.

cgroup v1 (proctrack/cgroup) puts every process of a job under ``slurm_<node>/uid_<uid>/job_<id>``
in each hierarchy (Debian's multi-slurmd build; ``slurm/uid_...`` on a plain one). cgroup v2
(cgroup/v2) puts it under ``<node>_slurmstepd.scope/job_<id>`` in the unified hierarchy (the ``0::``
line; ``slurmstepd.scope`` on a plain build), and since Slurm 26.05 under the job's SLUID instead of
``job_<id>`` (unless CgroupJobIdPaths=yes). A SLUID names no job id: slurmctld's job list does
(:class:`JobIds`). Never the process's environment: a job's user can start a process in their own
job's cgroup with ``SLURM_JOB_ID`` naming another job, and a process outside any job cgroup belongs
to no job whatever its environment says.
"""
from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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


class SluidJob(Protocol):
    """A job as slurmctld lists it: enough to name a SLUID's job."""

    job_id: int
    sluid: str


JobOfSluid = Callable[[str], "int | None"]


class JobIds:
    """SLUID -> job id from slurmctld's job list (``squeue --json``), which root reads and no user
    writes. A SLUID never changes its job, so an answer is kept; a SLUID not known yet asks slurmctld
    again, at most once per ``refresh_after`` seconds (a job's first processes may wait that long
    to be named; the agent and the guard both ask, hence the lock)."""

    def __init__(self, jobs: Callable[[], Iterable[SluidJob]], refresh_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self._jobs = jobs
        self._refresh_after = refresh_after
        self._clock = clock
        self._known: dict[str, int] = {}
        self._asked_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, sluid: str) -> int | None:
        with self._lock:
            if sluid not in self._known and self._clock() - self._asked_at >= self._refresh_after:
                self._asked_at = self._clock()
                self._known = {j.sluid: j.job_id for j in self._jobs() if j.sluid}  # ended jobs drop out
            return self._known.get(sluid)


def job_cgroup_of(pid: int, node: str, job_of_sluid: JobOfSluid, proc: Path = PROC) -> JobCgroup | None:
    """The job cgroup of this node a process is in, its job id filled in (a SLUID's by
    ``job_of_sluid``, e.g. a :class:`JobIds`); None when it is in none or gone."""
    try:
        cgroup = job_cgroup((proc / str(pid) / "cgroup").read_text(), node)
    except OSError:
        return None
    if cgroup is not None and cgroup.job_id is None and cgroup.sluid is not None:
        cgroup = dataclasses.replace(cgroup, job_id=job_of_sluid(cgroup.sluid))
    return cgroup


def job_of(pid: int, node: str, job_of_sluid: JobOfSluid, proc: Path = PROC) -> int | None:
    """The job a process belongs to; None when it is gone or sits in no job cgroup."""
    cgroup = job_cgroup_of(pid, node, job_of_sluid, proc)
    return None if cgroup is None else cgroup.job_id
