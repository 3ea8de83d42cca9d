"""Prologs that failed because the placement database did not answer.

Such a prolog exits non-zero, so Slurm requeues the job held and drains the node: a vgpu job never
starts without its slice, and no job starts on a node that cannot tell (the prolog cannot know a
job's GRES without the database). Each failure leaves a root-only record here; the node agent,
once the database answers again, releases those jobs and resumes the node if Slurm drained it for
the prolog (a drain for any other reason is left alone), then removes the records.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import Config


def _directory(config: Config, node: str) -> Path:
    """Per node: RunDir is node-local on a site, but several nodes of a dev cluster share it."""
    return config.run_dir / "failed-prologs" / node


RELEASED = "released"  # a record's reason once the agent released its job; the node may still be drained
SETTLING = "settling"  # nothing left to do for its job; kept until a late drain for it can be undone


@dataclass(frozen=True)
class Failure:
    """Why a job's prolog failed (or RELEASED), and how often Slurm had requeued the job then
    (``SLURM_JOB_RESTART_COUNT``): a higher count later says Slurm has requeued it since."""

    reason: str
    restarts: int = 0
    written: float = 0.0  # when the record was last written (its mtime)


def record(config: Config, node: str, job_id: int, reason: str, restarts: int = 0) -> None:
    directory = _directory(config, node)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.parent.chmod(0o700)
    fd = os.open(directory / str(job_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{restarts} {reason}\n")


def pending(config: Config, node: str) -> dict[int, Failure]:
    """Job id -> its failure on ``node``, for every failure not yet healed."""
    directory = _directory(config, node)
    if not directory.is_dir():
        return {}
    return {int(p.name): _failure(p.read_text(), p.stat().st_mtime) for p in directory.iterdir() if p.name.isdigit()}


def _failure(text: str, written: float) -> Failure:
    """``<restarts> <reason>``; a record written before the count was kept is its reason alone."""
    restarts, _, reason = text.strip().partition(" ")
    if restarts.isdigit():
        return Failure(reason, int(restarts), written)
    return Failure(text.strip(), 0, written)


def clear(config: Config, node: str, job_id: int) -> None:
    (_directory(config, node) / str(job_id)).unlink(missing_ok=True)


def mark_released(config: Config, node: str, job_id: int, restarts: int) -> None:
    """The job is released (or gone); its record stays until the node is resumed as well."""
    record(config, node, job_id, RELEASED, restarts)


def mark_settling(config: Config, node: str, job_id: int, restarts: int) -> None:
    """Nothing is left to do for the job: Slurm need not be asked about it again."""
    record(config, node, job_id, SETTLING, restarts)
