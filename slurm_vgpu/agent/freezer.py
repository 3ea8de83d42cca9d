"""Freezing and thawing a job on the cgroups Slurm made for it, or by signals where it made none.

cgroup v1 (proctrack/cgroup): the freezer of the *job* level (``slurm_<node>/uid_X/job_Y``, or
``slurm/uid_X/job_Y`` on a plain build), found from its processes' ``/proc/<pid>/cgroup``; Slurm's
own ``scontrol suspend`` freezes the *step* levels. A v1 cgroup is frozen while it or an ancestor
is, and ``freezer.self_freezing`` tells which, so thawing our level never resumes a job Slurm
suspended, and a job level that is self-frozen was frozen by us.

cgroup v2 (cgroup/v2): the *task* levels, ``<job>/step_*/user/task_*/cgroup.freeze``, the job's
directory found from its processes' ``/proc/<pid>/cgroup`` (``job_<id>``, or its SLUID since Slurm
26.05). Not the job level: slurmstepd itself lives in ``<job>/step_*/slurm``, and freezing it stalls
Slurm's own suspend and resume. Slurm never writes the task levels (it freezes ``step_*/user``),
so the two compose as on v1, and a task level whose ``cgroup.freeze`` is 1 was frozen by us.

Either way, what a crashed guard left frozen is what :meth:`Freezer.thaw_leftovers` thaws.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path

from . import procs

FREEZER = Path("/sys/fs/cgroup/freezer")


def unified_mount(mountinfo: Path = Path("/proc/self/mountinfo")) -> tuple[str, Path] | None:
    """Where this mount namespace has the cgroup2 filesystem: the cgroup at its root, and its mount point."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" in fields and fields[fields.index("-") + 1] == "cgroup2":
            return fields[3], Path(fields[4])
    return None


class Freezer:
    def __init__(self, node: str, *, job_of_sluid: procs.JobOfSluid, root: Path = FREEZER, proc: Path = procs.PROC,
                 unified: tuple[str, Path] | None = None):
        self.node = node
        self.job_of_sluid = job_of_sluid
        self.root = root
        self.proc = proc
        self.unified = unified if unified is not None else unified_mount(proc / "self" / "mountinfo")
        self.frozen: dict[int, set[Path]] = {}  # v2: the task levels we froze, per job

    def job_cgroup(self, job_id: int, pids: list[int]) -> Path | None:
        """The v1 freezer directory of the job these processes are in, when Slurm made one."""
        return self._freezer_jobs(self.proc / str(pid) for pid in pids).get(job_id)

    def _freezer_jobs(self, processes: Iterable[Path]) -> dict[int, Path]:
        """The v1 freezer job levels of this node's jobs these processes are in, by job."""
        jobs = {}
        for process in processes:
            cgroup = procs.job_cgroup_of(int(process.name), self.node, self.job_of_sluid, self.proc)
            if cgroup is not None and not cgroup.unified and cgroup.job_id is not None:
                directory = self.root / cgroup.path.lstrip("/")
                if (directory / "freezer.state").exists():
                    jobs[cgroup.job_id] = directory
        return jobs

    def freeze(self, job_id: int, pids: list[int]) -> None:
        self._apply(job_id, pids, True)

    def thaw(self, job_id: int, pids: list[int]) -> None:
        self._apply(job_id, pids, False)

    def thaw_leftovers(self) -> list[int]:
        """Thaw every job of this node left frozen by a guard that did not get to thaw it (crash)."""
        thawed = []
        processes = [p for p in self.proc.iterdir() if p.name.isdigit()]
        for job_id, cgroup in self._freezer_jobs(processes).items():
            if _read(cgroup / "freezer.self_freezing") == "1":
                _write(cgroup / "freezer.state", "THAWED")
                thawed.append(job_id)
        for job_id, tasks in self._unified_jobs(processes).items():
            frozen = [t for t in tasks if _read(t / "cgroup.freeze") == "1"]
            for task in frozen:
                _write(task / "cgroup.freeze", "0")
            if frozen and job_id is not None:
                thawed.append(job_id)
        return sorted(set(thawed))

    def task_cgroups(self, job_id: int, pids: list[int]) -> set[Path]:
        """The v2 task levels of the job whose processes these are."""
        return self._unified_jobs(self.proc / str(pid) for pid in pids).get(job_id, set())

    def _unified_jobs(self, processes: Iterable[Path]) -> dict[int | None, set[Path]]:
        """The v2 task levels of the jobs of this node these processes are in, by job."""
        jobs: dict[int | None, set[Path]] = {}
        for process in processes:
            cgroup = procs.job_cgroup_of(int(process.name), self.node, self.job_of_sluid, self.proc)
            directory = self._directory(cgroup.path) if cgroup is not None and cgroup.unified else None
            if directory is not None:
                jobs.setdefault(cgroup.job_id, set()).update(directory.glob("step_*/user/task_*"))
        return jobs

    def _directory(self, path: str) -> Path | None:
        """A unified cgroup as /proc names it, as a directory of the cgroup2 mount."""
        if self.unified is None:
            return None
        root, mountpoint = self.unified
        if root != "/" and path != root and not path.startswith(root + "/"):
            return None  # outside what is mounted here
        return mountpoint / path[len(root.rstrip("/")):].lstrip("/")

    def _apply(self, job_id: int, pids: list[int], frozen: bool) -> None:
        cgroup = self.job_cgroup(job_id, pids)
        if cgroup is not None:
            _write(cgroup / "freezer.state", "FROZEN" if frozen else "THAWED")
            return
        tasks = self.task_cgroups(job_id, pids) | (set() if frozen else self.frozen.pop(job_id, set()))
        if tasks:
            for task in sorted(tasks):
                _write(task / "cgroup.freeze", "1" if frozen else "0")
            if frozen:
                self.frozen[job_id] = tasks
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)
            except ProcessLookupError:
                continue


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:  # the job ended under us
        pass
