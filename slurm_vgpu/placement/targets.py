"""Slices sized by a latency target: a job of ``--vgpu-profile`` and ``--vgpu-slo`` is placed with the
smallest measured share that meets its target (slurm_vgpu.slo), on that share's GPU model, and never
above the share its ``--gres=vgpu:N`` asked for. Pure: the cycle hands in the profiles and GPUs."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from ..contract import VgpuRequest
from ..policy.model import Blocked, GpuState, PolicyConfig, Request
from ..policy.units import reference_speed, units_at
from ..profiles import Point
from ..slo import Option, choose, parse_target


def sized(requests: Iterable[Request], asked: Mapping[str, VgpuRequest], points: Sequence[Point],
          gpus: Sequence[GpuState], config: PolicyConfig) -> tuple[list[Request], list[Blocked]]:
    """The requests, each of a job with a target (``asked``: the jobs' recorded requests by job id)
    re-sized to one GPU model and share: the cheapest option that a GPU has room for now, else
    the cheapest. A job that no measured share within its asked share meets is blocked for good,
    its reason naming the best there is."""
    speeds: dict[str, float] = {}
    for g in gpus:
        speeds[g.model.lower()] = max(speeds.get(g.model.lower(), 0.0), g.speed)
    ref_speed = reference_speed(gpus, config)
    out, blocked = [], []
    for request in requests:
        vgpu = asked.get(request.job_id)
        if vgpu is None or vgpu.profile is None or vgpu.slo is None:
            out.append(request)
            continue
        target = parse_target(vgpu.slo)
        mine = [p for p in points if p.name == vgpu.profile and (vgpu.model is None or p.model == vgpu.model.lower())]
        choice = choose(mine, target, speeds)
        options = [(o, share) for o in choice.options
                   if (share := _reference_share(o, speeds, config, ref_speed)) is not None and share <= request.share]
        if not options:
            reason = choice.reason(vgpu.profile, target) if not choice.options else (
                f"the smallest measured share of {vgpu.profile!r} that meets {target} is "
                f"{choice.options[0].model} at {choice.options[0].share}%, above the vgpu:{request.share} it asked "
                "for; ask for more, or a looser target")
            blocked.append(Blocked(request.job_id, reason, never=True))
            continue
        option, share = next(((o, s) for o, s in options if _has_room(o, gpus)), options[0])
        out.append(replace(request, share=share, models=frozenset({option.model})))
    return out, blocked


def _reference_share(option: Option, speeds: Mapping[str, float], config: PolicyConfig,
                     ref_speed: float) -> int | None:
    """The share to request for ``option``: its SM share itself, or with ReferenceModel the least
    reference units that come to at least that share on its model (None past 100)."""
    speed = speeds.get(option.model)
    if speed is None:
        return None  # no GPU of its model here
    return next((r for r in range(1, 101) if units_at(r, speed, config, ref_speed) >= option.share), None)


def _has_room(option: Option, gpus: Sequence[GpuState]) -> bool:
    return any(g.available and g.model.lower() == option.model and g.free >= option.share for g in gpus)
