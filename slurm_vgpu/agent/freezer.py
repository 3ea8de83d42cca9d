"""Freezing and thawing a job: cgroup v1 freezer on the job's own cgroup when Slurm's
proctrack/cgroup made one, else SIGSTOP/SIGCONT to the job's GPU processes.

We freeze the *job* level (``slurm_<node>/uid_X/job_Y``); Slurm's own ``scontrol suspend`` freezes
the *step* levels. A v1 cgroup is frozen while it or an ancestor is, and ``freezer.self_freezing``
tells which, so thawing our level never resumes a job Slurm suspended, and a job level that is
self-frozen was frozen by us: that is what :meth:`Freezer.thaw_leftovers` relies on after a crash.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

FREEZER = Path("/sys/fs/cgroup/freezer")


class Freezer:
    def __init__(self, node: str, root: Path = FREEZER):
        self.base = root / f"slurm_{node}"

    def job_cgroup(self, job_id: int) -> Path | None:
        return next(iter(self.base.glob(f"uid_*/job_{job_id}")), None)

    def freeze(self, job_id: int, pids: list[int]) -> None:
        self._apply(job_id, pids, "FROZEN", signal.SIGSTOP)

    def thaw(self, job_id: int, pids: list[int]) -> None:
        self._apply(job_id, pids, "THAWED", signal.SIGCONT)

    def thaw_leftovers(self) -> list[int]:
        """Thaw every job level of this node frozen by a guard that did not get to thaw it (crash)."""
        thawed = []
        for cgroup in self.base.glob("uid_*/job_*"):
            try:
                if (cgroup / "freezer.self_freezing").read_text().strip() == "1":
                    (cgroup / "freezer.state").write_text("THAWED")
                    thawed.append(int(cgroup.name.removeprefix("job_")))
            except (OSError, ValueError):
                continue
        return thawed

    def _apply(self, job_id: int, pids: list[int], state: str, fallback: signal.Signals) -> None:
        cgroup = self.job_cgroup(job_id)
        if cgroup is not None:
            try:
                (cgroup / "freezer.state").write_text(state)
            except FileNotFoundError:  # the job ended under us
                pass
            return
        for pid in pids:
            try:
                os.kill(pid, fallback)
            except ProcessLookupError:
                continue
