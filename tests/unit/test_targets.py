"""Jobs of a latency target sized from their workload's profile before the policy places them. The
curves are made up (tests/unit/test_slo.py); the GPUs are policy records, not hardware."""
from __future__ import annotations

from slurm_vgpu.contract import UNPLACED, VgpuRequest
from slurm_vgpu.placement.targets import sized
from slurm_vgpu.policy.model import GpuState, PolicyConfig, Request

from .test_slo import H100, T4

POINTS = H100 + T4  # p99 at 10/20/30/50/70/100%: h100 38/23/18/14/12.3/11 ms, t4 60/45/40/36/34.3/33 ms


def gpu(uuid: str, model: str, speed: float, used: int = 0) -> GpuState:
    return GpuState(uuid=uuid, node="n1", index=0, model=model, memory_mib=16384, speed=speed, used=used)


GPUS = [gpu("h", "h100", 3.2), gpu("t", "t4", 0.21)]


def asked(share: int, slo: str | None, profile: str | None = "resnet", model: str | None = None) -> VgpuRequest:
    return VgpuRequest(UNPLACED, share, "latency", model=model, profile=profile if slo else None, slo=slo)


def size(share: int, slo: str | None, gpus=GPUS, config=PolicyConfig(), **kw):
    requests, blocked = sized([Request("7", share)], {"7": asked(share, slo, **kw)}, POINTS, gpus, config)
    return [(r.share, sorted(r.models)) for r in requests], [(b.reason, b.never) for b in blocked]


def test_the_cheapest_model_that_meets_the_target_gets_its_smallest_share():
    # 40 ms: t4 at 30% (6.3 of an A100's work) before h100 at 10% (32)
    assert size(60, "p99:40ms") == ([(30, ["t4"])], [])
    # 20 ms: only the h100 reaches it, from 30%
    assert size(60, "p99:20ms") == ([(30, ["h100"])], [])


def test_a_cheaper_model_without_room_now_gives_way_to_one_with_room():
    full_t4 = [gpu("h", "h100", 3.2), gpu("t", "t4", 0.21, used=80)]
    assert size(60, "p99:40ms", gpus=full_t4) == ([(10, ["h100"])], [])


def test_the_asked_share_is_the_most_a_target_may_take():
    (_, ((reason, never),)) = size(20, "p99:20ms")
    assert never and "h100 at 30%, above the vgpu:20 it asked for" in reason


def test_a_model_the_job_named_is_the_only_one_sized():
    assert size(60, "p99:40ms", model="h100") == ([(10, ["h100"])], [])


def test_no_profile_or_no_share_that_meets_it_fails_with_the_reason():
    (_, ((reason, never),)) = size(60, "p99:40ms", profile="bert")
    assert never and "no profile of 'bert'" in reason
    (_, ((reason, never),)) = size(100, "p99:5ms")
    assert never and "the best is h100 at 100% (p99 11 ms" in reason


def test_with_a_reference_model_the_share_is_asked_in_reference_units():
    # h100 at 30% of its SMs, in A100 units: the least r with ceil(r / 3.2) >= 30 is 93, above vgpu:60
    gpus = [gpu("h", "h100", 3.2), gpu("a", "a100", 1.0)]
    config = PolicyConfig(reference_model="a100")
    assert size(100, "p99:20ms", gpus=gpus, config=config) == ([(93, ["h100"])], [])
    assert size(60, "p99:20ms", gpus=gpus, config=config)[1][0][1]
    # and h100 at 10%: the least r with ceil(r / 3.2) >= 10 is 29
    assert size(60, "p99:40ms", gpus=gpus, config=config, model="h100") == (
        [(29, ["h100"])], [])


def test_a_job_without_a_target_is_left_as_it_asked():
    assert size(30, None) == ([(30, [])], [])
