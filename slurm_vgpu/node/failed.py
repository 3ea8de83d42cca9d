"""Prologs that failed because the placement database did not answer.

Such a prolog exits non-zero, so Slurm requeues the job held and drains the node: a vgpu job never
starts without its slice, and no job starts on a node that cannot tell (the prolog cannot know a
job's GRES without the database). Each failure leaves a root-only record here; the node agent,
once the database answers again, releases those jobs and resumes the node if Slurm drained it for
the prolog (a drain for any other reason is left alone), then removes the records.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import Config


def _directory(config: Config, node: str) -> Path:
    """Per node: RunDir is node-local on a site, but several nodes of a dev cluster share it."""
    return config.run_dir / "failed-prologs" / node


RELEASED = "released"  # a record's text once the agent released its job; the node may still be drained


def record(config: Config, node: str, job_id: int, reason: str) -> None:
    directory = _directory(config, node)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.parent.chmod(0o700)
    fd = os.open(directory / str(job_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(reason + "\n")


def pending(config: Config, node: str) -> dict[int, str]:
    """Job id -> why its prolog failed on ``node``, for every failure not yet healed."""
    directory = _directory(config, node)
    if not directory.is_dir():
        return {}
    return {int(p.name): p.read_text().strip() for p in directory.iterdir() if p.name.isdigit()}


def clear(config: Config, node: str, job_id: int) -> None:
    (_directory(config, node) / str(job_id)).unlink(missing_ok=True)


def mark_released(config: Config, node: str, job_id: int) -> None:
    """The job is released (or gone); its record stays until the node is resumed as well."""
    record(config, node, job_id, RELEASED)
