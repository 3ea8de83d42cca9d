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


def _directory(config: Config) -> Path:
    return config.run_dir / "failed-prologs"


def record(config: Config, job_id: int, reason: str) -> None:
    directory = _directory(config)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / str(job_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(reason + "\n")


def pending(config: Config) -> dict[int, str]:
    """Job id -> why its prolog failed, for every failure not yet healed."""
    directory = _directory(config)
    if not directory.is_dir():
        return {}
    return {int(p.name): p.read_text().strip() for p in directory.iterdir() if p.name.isdigit()}


def clear(config: Config, job_id: int) -> None:
    (_directory(config) / str(job_id)).unlink(missing_ok=True)
