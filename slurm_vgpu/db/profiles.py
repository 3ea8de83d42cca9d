"""Profiles in Postgres: a measured curve is stored whole or not at all, and replaces the curve it
measures again (same workload, GPU model and batch size)."""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..profiles import Figures, Point
from .models import Profile


def save_curve(session: Session, points: Sequence[Point], job_ids: Sequence[int | None]) -> None:
    """Replace the stored points of each (name, model, batch) in ``points`` by these, in the
    caller's transaction; ``job_ids[i]`` measured ``points[i]``."""
    for name, model, batch in {(p.name, p.model, p.figures.batch) for p in points}:
        session.execute(sa.delete(Profile).where(Profile.name == name, Profile.model == model,
                                                 Profile.batch == batch))
    session.add_all(Profile(name=p.name, model=p.model, share=p.share, batch=p.figures.batch,
                            throughput=p.figures.throughput, p50_ms=p.figures.p50_ms, p99_ms=p.figures.p99_ms,
                            job_id=job_id) for p, job_id in zip(points, job_ids, strict=True))
    session.flush()


def stored_points(session: Session, names: Sequence[str] | None = None) -> list[tuple[Point, Profile]]:
    """Every stored point (of ``names`` when given) with its row, by name, model, batch and share."""
    query = sa.select(Profile).order_by(Profile.name, Profile.model, Profile.batch, Profile.share)
    if names is not None:
        query = query.where(Profile.name.in_(names))
    return [(Point(r.name, r.model, r.share, Figures(r.throughput, r.p50_ms, r.p99_ms, r.batch)), r)
            for r in session.scalars(query)]


def full_gpu_throughputs(session: Session, name: str) -> dict[str, float]:
    """Each GPU model's throughput of workload ``name`` at a share of 100, at the smallest batch size
    measured there."""
    rows = session.execute(sa.select(Profile.model, Profile.batch, Profile.throughput)
                           .where(Profile.name == name, Profile.share == 100)
                           .order_by(Profile.model, Profile.batch.desc())).all()
    return {model: throughput for model, _, throughput in rows}  # the smallest batch's row comes last
